"""Drain-aware scale-down on real Ray Serve, local (issue 13 acceptance): 20 streaming chat completions in flight while
the engine deployment goes from 3 replicas to 1.

The scale is the one ``moectl up``'s autoscaler makes (``moe_runtime.local_serve.scale``: the serveConfigV2 applied
again with the pool's new ``num_replicas``). Serve picks the two replicas to stop, routes them nothing new and lets them
finish their streams for up to ``graceful_shutdown_timeout_s`` (moe_runtime.drain): every one of the 20 requests ends
with finish_reason "length" and exactly the tokens it asked for. The old behaviour, the replicas removed first (the
actuator patched the worker pods' count and KubeRay deleted pods at random, streams and all), is the second test:
two replica actors killed abruptly, as a pod deletion kills them, then the same scale; it loses requests, and prints
how many.

Overlap is made, not hoped for: the scale is posted only once all 20 streams have their first token, and each stream
asks for STREAM_TOKENS (about 10 s of decode here while Serve takes ~1 s to start stopping replicas). The test checks
that it held: the replicas Serve stopped still had streams when Serve reported them STOPPING. Which replicas exist
and what each holds come from Serve itself (the controller's instance details, each replica actor's
``get_num_ongoing_requests``).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from require import need
from runtime_serving.serving_support import wait_for

pytestmark = [pytest.mark.ray, pytest.mark.slow]

openai = pytest.importorskip("openai")

APP = "drain-test"
POOL = "cpu"
DEPLOYMENT = f"engine-{POOL}"
STREAMS = 20
STREAM_TOKENS = 128   # ~10 s of decode at ~80 ms per token with three replicas on two cores: a scale lands mid-stream
CONTEXT = 512         # max_context_tokens: the drain is 512 x 0.2 s x 1.25 + 30 = 158 s (moe_runtime.drain)
PROMPT = "Count slowly."   # its greedy answer has no end-of-sequence token within 300 tokens, so each stream runs
#                            to max_tokens and ends with finish_reason "length"
HANG_S = 300          # bounds a broken run only; every wait below is for an event


@pytest.fixture(scope="module")
def app():
    try:
        from ray import serve  # noqa: F401

        from moe_runtime import local_serve as local
        from moe_runtime.config import RuntimeConfig
    except ImportError as exc:
        need("ray[serve]", str(exc))
    from ray_support import serve_runtime

    cfg = RuntimeConfig(model_name="tiny-moe", model_source="builtin://tiny-moe", device="cpu",
                        pools=[{"name": POOL, "num_replicas": 3, "ray_actor_options": {"num_cpus": 0.5}}],
                        max_batch_size=STREAMS, max_queue=8, max_context_tokens=CONTEXT, cache={"prefix": False})
    with serve_runtime(APP, cfg, {"MOE_TORCH_THREADS": "1"}) as url:   # one replica of 20 streams decodes all at once
        port = int(url.rsplit(":", 1)[1])
        yield {"url": url, "port": port, "config": local.serve_config(APP, cfg)}


def scale(app: dict, n: int) -> None:
    """What moectl up's autoscaler does (cli/up.py apply): the applied config again with the pool's new count."""
    from moe_runtime import local_serve as local

    app["config"] = local.scale(app["config"], {POOL: n}, "127.0.0.1", app["port"])


def replicas() -> dict[str, dict]:
    """The engine deployment's replicas as Serve's controller lists them: replica id -> {state, actor_name}."""
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()
    dep = details["applications"][APP]["deployments"][DEPLOYMENT]
    return {r["replica_id"]: r for r in dep["replicas"]}


def state(replica: dict) -> str:
    return str(getattr(replica["state"], "value", replica["state"]))   # a ReplicaState enum: "RUNNING", "STOPPING"


def states() -> dict[str, int]:
    out: dict[str, int] = {}
    for r in replicas().values():
        out[state(r)] = out.get(state(r), 0) + 1
    return out


def settled(n: int) -> bool:
    from moe_runtime import local_serve as local

    status, _, deps = local.app_status(APP)
    return status == "RUNNING" and deps.get(DEPLOYMENT) == "HEALTHY" and states() == {"RUNNING": n}


def ongoing(replica_ids) -> dict[str, int]:
    """Requests each replica is serving now (Serve's own count, from the replica actor)."""
    import ray

    reps = replicas()
    out = {}
    for rid in replica_ids:
        try:
            actor = ray.get_actor(reps[rid]["actor_name"], namespace="serve")
            out[rid] = ray.get(actor.get_num_ongoing_requests.remote(), timeout=60)
        except (KeyError, ValueError, ray.exceptions.RayError):
            out[rid] = 0   # gone
    return out


@dataclass
class Stream:
    tokens: int = 0                 # token chunks received
    finish: str | None = None
    usage_tokens: int | None = None
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def complete(self) -> bool:
        return (self.error is None and self.finish == "length" and self.tokens == STREAM_TOKENS
                and self.usage_tokens == STREAM_TOKENS)


def start_streams(url: str) -> list[Stream]:
    # Retries cover only the request before its stream starts: on a loaded machine 20 arrivals at once can find the
    # ingress' handle queue full for a moment (HTTP 429 with Retry-After, moe_runtime.serve_app HANDLE_QUEUE), which a
    # client retries. A stream that breaks once started is not retried: that is what the tests count.
    client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=5, timeout=HANG_S)
    streams = [Stream() for _ in range(STREAMS)]

    def run(s: Stream) -> None:
        try:
            for chunk in client.chat.completions.create(
                    model="tiny-moe", messages=[{"role": "user", "content": PROMPT}], max_tokens=STREAM_TOKENS,
                    temperature=0, stream=True, stream_options={"include_usage": True}):
                if not chunk.choices:                       # the usage chunk
                    s.usage_tokens = chunk.usage.completion_tokens
                    continue
                c = chunk.choices[0]
                if c.finish_reason is not None:
                    s.finish = c.finish_reason
                elif c.delta.role is None:                  # one chunk per generated token (the role chunk first)
                    s.tokens += 1
        except Exception as exc:  # noqa: BLE001 (a lost stream: what the test counts)
            s.error = f"{type(exc).__name__}: {exc}"
        finally:
            s.done.set()

    for s in streams:
        threading.Thread(target=run, args=(s,), daemon=True).start()
    assert wait_for(lambda: all(s.tokens >= 1 or s.done.is_set() for s in streams), HANG_S, 0.05)
    started = [s for s in streams if s.tokens >= 1 and not s.done.is_set()]
    assert len(started) == STREAMS, [s.error for s in streams if s.done.is_set()]   # all 20 in flight
    return streams


def finish(streams: list[Stream], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for s in streams:
        assert s.done.wait(max(0.0, deadline - time.monotonic())), "a stream hung"


@pytest.mark.timing_sensitive   # the streams outlast Serve's start of the stop (checked: STOPPING with streams left)
def test_scale_3_to_1_drains_every_stream_to_its_full_token_count(app):
    from moe_runtime.drain import drain_timeout_s

    assert wait_for(lambda: settled(3), HANG_S, 0.5), states()
    before = set(replicas())
    streams = start_streams(app["url"])
    held = ongoing(before)                       # streams per replica, all 20 in flight
    t0 = time.monotonic()
    scale(app, 1)

    seen: dict[str, int] = {}                    # replica -> its streams when Serve first reported it STOPPING
    unfinished_at_stop: list[int] = []

    def stopping() -> bool:
        reps = replicas()
        new = [rid for rid, r in reps.items() if state(r) == "STOPPING" and rid not in seen]
        if new:
            unfinished_at_stop.append(sum(not s.done.is_set() for s in streams))
            seen.update(ongoing(new))
        return len(seen) >= 2 or (set(reps) <= before and len(reps) == 1)

    assert wait_for(stopping, HANG_S, 0.05), states()
    t_stop = time.monotonic() - t0
    finish(streams, drain_timeout_s(CONTEXT) + 60)
    assert wait_for(lambda: settled(1), HANG_S, 0.5), states()
    t_done = time.monotonic() - t0

    stopped = before - set(replicas())
    assert len(stopped) == 2 and set(seen) == stopped, (seen, stopped)
    # the overlap held: Serve began stopping both while they still streamed (none had finished yet)
    assert unfinished_at_stop and unfinished_at_stop[0] == STREAMS, unfinished_at_stop
    assert all(seen[r] >= 1 for r in stopped), seen
    bad = [(s.finish, s.tokens, s.usage_tokens, s.error) for s in streams if not s.complete()]
    assert not bad, bad                           # all 20 complete, each with exactly its asked token count
    print(f"\ndrain scale-down 3 -> 1: {STREAMS}/{STREAMS} streams of {STREAM_TOKENS} tokens completed; the 2 "
          f"replicas Serve stopped held {sum(held[r] for r in stopped)} of them ({seen} still streaming at STOPPING, "
          f"{t_stop:.1f} s after the scale); settled at 1 replica {t_done:.1f} s after the scale")


@pytest.mark.timing_sensitive   # the kill lands mid-stream (the same overlap as above)
def test_old_behaviour_replicas_removed_first_loses_streams(app):
    import ray

    scale(app, 3)
    assert wait_for(lambda: settled(3), HANG_S, 0.5), states()
    before = set(replicas())
    streams = start_streams(app["url"])
    held = ongoing(before)
    victims = sorted(held, key=lambda r: held[r], reverse=True)[:2]   # two of three "pods" deleted, as KubeRay may
    reps = replicas()
    for rid in victims:
        ray.kill(ray.get_actor(reps[rid]["actor_name"], namespace="serve"), no_restart=True)
    scale(app, 1)                                # and Serve's count lowered with them, as the old actuator did
    finish(streams, HANG_S)
    lost = [s for s in streams if not s.complete()]
    print(f"\nold behaviour (2 of 3 replicas removed first, then num_replicas 3 -> 1): {len(lost)} of {STREAMS} "
          f"streams lost (the removed replicas held {sum(held[r] for r in victims)}); "
          f"{STREAMS - len(lost)} completed; e.g. {lost[0].error if lost else None}")
    assert len(lost) >= 1
    assert wait_for(lambda: settled(1), HANG_S, 0.5), states()
