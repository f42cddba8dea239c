"""On real Ray Serve (issue 13 acceptance): an engine replica killed by hand is replaced by Serve, and the new
replica, a new process with an empty memory tier, answers the same prompt from the disk tier its predecessor wrote.
The replica's own usage says so (``prompt_tokens_details.cached_tokens``), through the official openai client."""
from __future__ import annotations

import pytest

from require import need
from runtime_serving.serving_support import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

openai = pytest.importorskip("openai")

APP = "disk-tier-test"
DEPLOYMENT = "engine-cpu"
PROMPT = ("A disk tier keeps prompt KV blocks across replica restarts, so a long shared system prompt is read back "
          "instead of recomputed after the replica comes back. ") * 4
HANG_S = 300   # bounds a broken run only


def replicas() -> dict[str, dict]:
    from ray.serve.context import _get_global_client

    dep = _get_global_client().get_serve_details()["applications"][APP]["deployments"][DEPLOYMENT]
    return {r["replica_id"]: r for r in dep["replicas"]}


def running() -> set[str]:
    return {rid for rid, r in replicas().items() if str(getattr(r["state"], "value", r["state"])) == "RUNNING"}


def test_a_replica_killed_by_hand_comes_back_with_its_disk_cache(tmp_path):
    try:
        import ray

        from moe_runtime.config import RuntimeConfig
    except ImportError as exc:
        need("ray[serve]", str(exc))
    from ray_support import serve_runtime

    cfg = RuntimeConfig(model_name="tiny-moe", model_source="builtin://tiny-moe", device="cpu",
                        pools=[{"name": "cpu", "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.5}}],
                        cache={"block_tokens": 16, "disk_dir": str(tmp_path)})
    with serve_runtime(APP, cfg, {"MOE_TORCH_THREADS": "1"}) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=5, timeout=HANG_S)

        def cached() -> int:
            r = client.completions.create(model="tiny-moe", prompt=PROMPT, max_tokens=2)
            return r.usage.prompt_tokens_details.cached_tokens

        assert cached() == 0
        slot = tmp_path / "writer-0"
        assert wait_for(lambda: len(list(slot.glob("*.kvb"))) >= 4, 60), list(tmp_path.rglob("*"))
        (first,) = running()
        ray.kill(ray.get_actor(replicas()[first]["actor_name"], namespace="serve"), no_restart=True)
        assert wait_for(lambda: running() and first not in running(), HANG_S, 0.5), replicas()
        hit = cached()                      # the replacement: a new process, nothing in memory
        assert hit >= 4 * 16, hit
        assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["writer-0"]   # its predecessor's slot
