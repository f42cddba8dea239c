"""The router on real Ray Serve, local (issue 12 acceptance), driven by the official openai client.

``examples/tiny-moe-two-pools.yaml`` as ``moectl up`` renders and deploys it (``cli.up.serve_config_for``, the
pools' Ray resources advertised by the local Ray): two CPU pools at 1:4 prices, two replicas each, one endpoint.
Multi-turn conversations, each turn sent after the last one finished:
  * the prompt-cache hit ratio over the 4 replicas (the usage's ``prompt_tokens_details.cached_tokens``, which the
    engines report) is at least 0.9x that of the same conversations on one replica; least-loaded routing over the
    same 4 replicas is printed beside it;
  * while the cheaper pool has headroom, at least 80% of the tokens go to it (the engines' own token counters by
    pool, from /metrics);
  * a deployment at zero wakes: with every pool's replica unplaceable, a request waits (moe_router_waiting_requests
    counts it) and completes once a node with the pool's resource joins.
"""
from __future__ import annotations

import contextlib
import re
import threading
import urllib.request
from pathlib import Path

import pytest

from require import need
from runtime_serving.serving_support import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

openai = pytest.importorskip("openai")

CONVERSATIONS = 8
TURNS = 4
HANG_S = 300


def _conversations(url: str) -> tuple[int, int]:
    """(cached prompt tokens, prompt tokens) over CONVERSATIONS chats of TURNS turns, chats run side by side."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=5, timeout=HANG_S)
    totals = [0, 0]
    lock = threading.Lock()

    def chat(c: int) -> None:
        # each user's own system prompt (its first block differs), as separate users' conversations are
        messages = [{"role": "system", "content": f"{c * 7919} user {c}. " + "Be brief and kind. " * 12}]
        for t in range(TURNS):
            messages.append({"role": "user", "content": f"Question {t} of chat {c}: tell me about the number {t}."})
            r = client.chat.completions.create(model="tiny-moe", messages=messages, max_tokens=8, temperature=0)
            messages.append({"role": "assistant", "content": r.choices[0].message.content or ""})
            with lock:
                totals[0] += r.usage.prompt_tokens_details.cached_tokens
                totals[1] += r.usage.prompt_tokens

    threads = [threading.Thread(target=chat, args=(c,)) for c in range(CONVERSATIONS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(HANG_S)
    return totals[0], totals[1]


def _tokens_by_pool(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    out: dict[str, float] = {}
    for m in re.finditer(r'^moe_tokens_total\{([^}]*)\} ([0-9.e+]+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        out[labels["pool"]] = out.get(labels["pool"], 0.0) + float(m.group(2))
    return out


def _waiting(url: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    m = re.search(r'^moe_router_waiting_requests\{[^}]*pool=""[^}]*\} ([0-9.e+]+)$', text, re.M)
    return float(m.group(1)) if m else -1.0


EXAMPLE = "examples/tiny-moe-two-pools.yaml"


@contextlib.contextmanager
def _serve(replicas: dict[str, int], policy: str = "cost-prefix"):
    """The example's app, as moectl up renders it, with ``replicas`` per pool (a pool left out is dropped) and the
    router's ``policy``; yields its base URL."""
    try:
        from ray import serve  # noqa: F401
    except ImportError as exc:
        need("ray[serve]", str(exc))
    from moe_operator.cli.up import _pool_resources, serve_config_for
    from moe_runtime import local_serve as local
    from ray_support import ray_session

    root = Path(__file__).resolve().parents[2]
    name, _, config = serve_config_for(str(root / EXAMPLE))
    app = config["applications"][0]
    app["args"]["pools"] = [p for p in app["args"]["pools"] if p["name"] in replicas]
    app["args"]["routing"]["policy"] = policy
    app["deployments"] = [d for d in app["deployments"]
                          if not d["name"].startswith("engine-") or d["name"][len("engine-"):] in replicas]
    config = local.with_replicas(config, replicas)
    for d in config["applications"][0]["deployments"]:
        if d["name"].startswith("engine-"):
            d["ray_actor_options"] = {**d["ray_actor_options"], "num_cpus": 0.25}
    with ray_session({"MOE_TORCH_THREADS": "1"}, resources=_pool_resources(config)) as port:
        local.deploy(config, port=port)
        local.wait_running(name, 300)
        yield f"http://127.0.0.1:{port}"


def test_prefix_aware_routing_keeps_the_hit_ratio_and_the_cheap_pool_takes_the_tokens():
    ratios = {}
    for name, replicas, policy in (("1 replica", {"cheap": 1}, "cost-prefix"),
                                   ("4 replicas, cost-prefix", {"cheap": 2, "dear": 2}, "cost-prefix"),
                                   ("4 replicas, least-loaded", {"cheap": 2, "dear": 2}, "least-loaded")):
        with _serve(replicas, policy) as url:
            cached, prompt = _conversations(url)
            ratios[name] = cached / prompt
            share = _tokens_by_pool(url)
            blocks = re.findall(r'^moe_router_prefix_blocks_total\{[^}]*result="(\w+)"\} ([0-9.e+]+)$',
                                urllib.request.urlopen(url + "/metrics", timeout=30).read().decode(), re.M)
        cheap = share.get("cheap", 0.0) / max(1.0, sum(share.values()))
        print(f"\n{name}: prompt-cache hit ratio {ratios[name]:.3f} ({cached}/{prompt} tokens); "
              f"cheap pool's share of tokens {cheap:.1%}; router's index: {dict(blocks)}")
        if policy == "cost-prefix" and "dear" in replicas:
            assert cheap >= 0.8, f"the cheap pool had headroom (8 chats, 2 x 8 slots) but took {cheap:.1%}"
    assert ratios["1 replica"] > 0.3  # the conversations have reuse to find
    assert ratios["4 replicas, cost-prefix"] >= 0.9 * ratios["1 replica"], ratios


def test_a_deployment_at_zero_wakes_on_the_first_request_which_completes():
    """Every pool at zero as on a cluster: the engine's Serve replica exists but cannot be placed, because no
    node offers the pool's resource (its worker group has no pods; Serve's schema refuses num_replicas 0). The
    ingress still starts, holds the first request and counts it in moe_router_waiting_requests; a node with the
    pool's resource then joins (what the autoscaler's scale-up brings: a worker pod), Serve places the replica,
    and the held request completes."""
    try:
        import ray
        from ray import serve  # noqa: F401
        from ray.cluster_utils import Cluster
    except ImportError as exc:
        need("ray[serve]", str(exc))
    from moe_runtime import local_serve as local
    from moe_runtime.config import RuntimeConfig
    from runtime_serving.serving_support import free_port

    local.serve_env_defaults()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cfg = RuntimeConfig(model_name="tiny-moe", model_source="builtin://tiny-moe", device="cpu",
                            pools=[{"name": "cheap", "num_replicas": 1,
                                    "ray_actor_options": {"num_cpus": 0.25, "resources": {"pool-cheap": 1}}}],
                            max_batch_size=4, max_queue=16, max_context_tokens=1024, wake_deadline_s=240)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        local.deploy(local.serve_config("wake-test", cfg), port=port)

        def ingress_up() -> bool:
            try:
                return urllib.request.urlopen(url + "/v1/models", timeout=5).status == 200
            except Exception:  # noqa: BLE001 (not up yet)
                return False

        assert wait_for(ingress_up, 120), "the ingress never started while its only pool was at zero"
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=HANG_S)
        result: dict = {}

        def ask():
            try:
                result["r"] = client.completions.create(model="tiny-moe", prompt="hello", max_tokens=4)
            except Exception as exc:  # noqa: BLE001 (reported by the assert below)
                result["error"] = exc

        th = threading.Thread(target=ask)
        th.start()
        assert wait_for(lambda: _waiting(url) == 1.0, 60), "the router never counted the request as waiting"
        assert "r" not in result and "error" not in result
        cluster.add_node(num_cpus=1, resources={"pool-cheap": 1})   # the worker pod the scale-up brings
        th.join(HANG_S)
        assert "error" not in result, result.get("error")
        assert result["r"].usage.completion_tokens == 4
        assert _waiting(url) == 0.0
    finally:
        local.shutdown()
        ray.shutdown()
        cluster.shutdown()
