"""RemoteEngine (the ingress's view of the pools): routing, fall-over on a full queue, cancellation, replica sums.

The deployment handles are stand-ins with the shape of Serve's (``.options(stream=True).generate.remote(...)``
gives an async generator with ``cancel()``; ``.snapshot.remote()`` an awaitable), so these run without Ray;
the real handles are exercised end to end in test_moectl_up.py.
"""
from __future__ import annotations

import asyncio
import itertools
from dataclasses import asdict

import pytest

pytest.importorskip("ray.serve")

from moe_runtime.engine.api import EngineStats, PromptTooLong, QueueFull, SamplingParams, TokenEvent, Usage  # noqa: E402
from moe_runtime.serve_app import RemoteEngine  # noqa: E402


class FakeGen:
    def __init__(self, items):
        self.items, self.cancelled = list(items), False

    def __aiter__(self):
        return self

    async def __anext__(self):
        await asyncio.sleep(0)   # a remote answer: other requests are decided meanwhile
        if self.cancelled or not self.items:
            raise StopAsyncIteration
        return self.items.pop(0)

    def cancel(self):
        self.cancelled = True


class FakeHandle:
    """An engine-<pool> deployment: ``admit`` decides the first message; ``replicas`` answer snapshots in turn."""

    def __init__(self, admit: dict, replicas: int = 1, tokens: int = 3):
        self.admit, self.tokens, self.gens, self.calls, self.routes = admit, tokens, [], 0, []
        self._replica = itertools.cycle(range(replicas))
        outer = self

        class _Method:
            def __init__(self, name):
                self.name = name

            def remote(self, *args, route_to=None):
                if self.name == "generate":
                    outer.calls += 1
                    outer.routes.append(route_to)
                    events = [TokenEvent(10 + i, i == outer.tokens - 1, "length" if i == outer.tokens - 1 else None,
                                         Usage(len(args[0]), outer.tokens, 0, len(args[0]))
                                         if i == outer.tokens - 1 else None) for i in range(outer.tokens)]
                    admit = {**outer.admit, "replica": route_to} if route_to and outer.admit.get("accepted") \
                        else outer.admit  # Serve honoured the hint (serve_router.HintRouter)
                    gen = FakeGen([admit, *events] if admit.get("accepted") else [admit])
                    outer.gens.append(gen)
                    return gen
                replica = next(outer._replica)

                async def snap():
                    return {"replica": f"r{replica}", "time": 0.0,
                            "stats": asdict(EngineStats(queue_depth=1, tokens={"prompt": 0, "cached_prompt": 0,
                                                                               "generated": 5 + replica}))}
                return snap()

        self.generate, self.snapshot = _Method("generate"), _Method("snapshot")

    def options(self, **_):
        return self


INFO = {"model_name": "tiny-moe", "max_context_tokens": 512, "eos_token_id": None, "chat_template": None}


@pytest.fixture
def info():
    from tokenizers import Tokenizer, models

    return {**INFO, "tokenizer_json": Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).to_str()}


ACCEPT = {"accepted": True, "replica": "r0"}
FULL = {"rejected": "queue_full", "retry_after_s": 2.0, "message": "full"}


def test_a_full_pool_falls_over_to_the_next_and_streams_from_it(info):
    a, b = FakeHandle(FULL), FakeHandle(ACCEPT)
    eng = RemoteEngine({"a": a, "b": b}, info)

    async def go():
        stream = await eng.generate([1, 2], SamplingParams(max_tokens=3), "r")
        assert stream.pool == "b"
        return [ev async for ev in stream]

    events = asyncio.run(go())
    assert [e.token_id for e in events] == [10, 11, 12] and events[-1].usage.completion_tokens == 3
    assert a.calls == 1 and b.calls == 1 and eng.inflight == {"a": 0, "b": 0}


def test_every_pool_full_is_queue_full_with_the_shortest_retry(info):
    eng = RemoteEngine({"a": FakeHandle(FULL), "b": FakeHandle({**FULL, "retry_after_s": 1.5})}, info)
    with pytest.raises(QueueFull) as e:
        asyncio.run(eng.generate([1], SamplingParams(), "r"))
    assert e.value.retry_after_s == 1.5  # the soonest any pool expects room
    assert eng.inflight == {"a": 0, "b": 0}


def test_prompt_too_long_is_raised_not_retried(info):
    b = FakeHandle(ACCEPT)
    eng = RemoteEngine({"a": FakeHandle({"rejected": "prompt_too_long", "prompt_tokens": 600,
                                         "max_context_tokens": 512, "message": "too long"}), "b": b}, info)
    with pytest.raises(PromptTooLong):
        asyncio.run(eng.generate([1] * 600, SamplingParams(), "r"))
    assert b.calls == 0


def test_closing_the_stream_cancels_the_remote_call(info):
    h = FakeHandle(ACCEPT, tokens=50)
    eng = RemoteEngine({"a": h}, info)

    async def go():
        stream = await eng.generate([1], SamplingParams(max_tokens=50), "r")
        await stream.__anext__()
        assert eng.inflight["a"] == 1
        await stream.aclose()

    asyncio.run(go())
    assert h.gens[0].cancelled and eng.inflight["a"] == 0


def test_stats_sum_every_replica_of_a_pool(info):
    eng = RemoteEngine({"a": FakeHandle(ACCEPT, replicas=3), "b": FakeHandle(ACCEPT, replicas=1)}, info)
    asyncio.run(eng.stats_by_pool())  # first round learns the replicas
    by_pool = asyncio.run(eng.stats_by_pool())
    assert by_pool["a"].tokens["generated"] == 5 + 6 + 7 and by_pool["a"].queue_depth == 3
    assert by_pool["b"].tokens["generated"] == 5 and by_pool["b"].queue_depth == 1
    assert eng.stats().queue_depth == 4


def test_a_gone_replica_keeps_its_counters_and_drops_its_gauges(info):
    """A replica silent past STALE_SNAPSHOT_S: its gauges stop adding, its counters (cache rejections included)
    stay, so a counter never goes down in /metrics."""
    eng = RemoteEngine({}, info)
    eng._snaps = {"a": {"r0": (EngineStats(queue_depth=4, running=2, prefix_cache_disk_write_failures=3,
                                           prefix_cache_disk_bad_blocks={"corrupt": 2, "foreign": 1},
                                           tokens={"prompt": 1, "cached_prompt": 0, "generated": 9}), 0.0)}}
    eng.front_rejections = {"a": 0}
    a = asyncio.run(eng.stats_by_pool())["a"]
    assert (a.queue_depth, a.running) == (0, 0)
    assert a.tokens["generated"] == 9 and a.prefix_cache_disk_write_failures == 3
    assert a.prefix_cache_disk_bad_blocks == {"corrupt": 2, "foreign": 1}


def test_concurrent_and_repeated_scrapes_share_one_collection(info, monkeypatch):
    """Issue 14 item 16: /metrics used to cost 2n+2 snapshot calls per pool on EVERY scrape. Scrapes now share
    one in-flight collection, and one within METRICS_TTL_S of the last is answered from it: actor calls are bounded
    by the TTL, not by the scrape rate. (The TTL is set to an hour here so no clock decides the outcome.)"""
    import moe_runtime.serve_app as sa

    monkeypatch.setattr(sa, "METRICS_TTL_S", 3600.0, raising=False)
    n = 8
    a, b = FakeHandle(ACCEPT, replicas=n), FakeHandle(ACCEPT, replicas=1)
    counted = {"a": 0, "b": 0}
    for name, h in (("a", a), ("b", b)):
        orig = h.snapshot.remote

        def counting(*args, _name=name, _orig=orig):
            counted[_name] += 1
            return _orig(*args)
        h.snapshot.remote = counting
    eng = RemoteEngine({"a": a, "b": b}, info)

    async def scrapes(k):
        return await asyncio.gather(*(eng.stats_by_pool() for _ in range(k)))

    first = asyncio.run(scrapes(20))
    one_round = dict(counted)
    assert one_round == {"a": 2 * 1 + 2, "b": 2 * 1 + 2}  # one collection for 20 concurrent scrapes
    assert all(r["a"].tokens == first[0]["a"].tokens for r in first)
    for _ in range(50):
        asyncio.run(eng.stats_by_pool())
    assert counted == one_round  # 50 more scrapes within the TTL: no actor call
    monkeypatch.setattr(sa, "METRICS_TTL_S", 0.0)
    asyncio.run(eng.stats_by_pool())
    assert counted["a"] > one_round["a"]  # past the TTL the next scrape collects again


def test_gone_replicas_leave_the_snapshot_table_but_not_the_counters(info, monkeypatch):
    """``_snaps`` holds live replicas only: a replica silent past STALE_SNAPSHOT_S is retired (its counters
    folded into the pool's retired sum, kept at most MAX_RETIRED by id) and its entry dropped; one that answers
    again is not counted twice."""
    import moe_runtime.serve_app as sa

    monkeypatch.setattr(sa, "METRICS_TTL_S", 0.0, raising=False)  # every call collects
    eng = RemoteEngine({}, info)
    eng.front_rejections = {"a": 0}
    stats = lambda g: EngineStats(queue_depth=1, tokens={"prompt": 0, "cached_prompt": 0, "generated": g})  # noqa: E731
    eng._snaps = {"a": {f"r{i}": (stats(10), 0.0) for i in range(sa.MAX_RETIRED + 5)}}
    eng._snaps["a"]["live"] = (stats(1), float("inf"))  # seen "now" whatever the clock says
    a = asyncio.run(eng.stats_by_pool())["a"]
    assert list(eng._snaps["a"]) == ["live"]
    assert a.tokens["generated"] == 10 * (sa.MAX_RETIRED + 5) + 1 and a.queue_depth == 1
    assert len(eng._retired["a"]) <= sa.MAX_RETIRED + 1  # by id, the oldest folded into one sum
    back = f"r{sa.MAX_RETIRED + 4}"  # retired (kept by id) at 10 tokens; answers again with 12
    eng._snaps["a"][back] = (stats(12), float("inf"))
    assert asyncio.run(eng.stats_by_pool())["a"].tokens["generated"] == 10 * (sa.MAX_RETIRED + 4) + 12 + 1


def test_snapshots_a_pool_leaves_unanswered_are_counted_and_exported_with_the_collection_time(info, monkeypatch):
    """/metrics tells how complete it is: snapshot calls a pool did not answer within SNAPSHOT_S (a hung pool, or
    the stall HintRouter once caused) are counted per pool, and the collection's duration is exported, so an SRE
    (and test_moectl_up) can see a stale pool instead of reading its last figures as current."""
    import moe_runtime.serve_app as sa
    from moe_runtime.metrics import RuntimeMetrics

    monkeypatch.setattr(sa, "SNAPSHOT_S", 0.05)
    monkeypatch.setattr(sa, "METRICS_TTL_S", 0.0, raising=False)
    hung = FakeHandle(ACCEPT, replicas=1)

    class _Never:
        def remote(self, *args, **kw):
            class Call:
                def __await__(self):
                    return asyncio.Event().wait().__await__()   # no replica ever answers

                def cancel(self):
                    pass
            return Call()
    hung.snapshot = _Never()
    eng = RemoteEngine({"ok": FakeHandle(ACCEPT, replicas=2), "hung": hung}, info)
    for _ in range(2):
        asyncio.run(eng.stats_by_pool())
    figures = eng.router_figures()
    assert figures["snapshot_timeouts"] == {"ok": 0, "hung": 2 * (2 * 1 + 2)}  # 2n+2 calls, n = 0 known replicas
    assert sa.SNAPSHOT_S <= figures["collection_seconds"] < 5
    metrics = RuntimeMetrics("tiny-moe")
    metrics.update_router(**figures)
    text = metrics.render().decode()
    assert 'moe_metrics_snapshot_timeouts_total{model="tiny-moe",pool="hung"} 8.0' in text
    assert 'moe_metrics_snapshot_timeouts_total{model="tiny-moe",pool="ok"} 0.0' in text
    assert 'moe_metrics_collection_seconds{model="tiny-moe",pool=""} ' in text


def _serve_says(app: str, live: dict[str, list[str]]) -> None:
    """What serve_router.HintRouter publishes when Serve tells it a deployment's running replicas."""
    from moe_runtime import serve_router

    for pool, ids in live.items():
        serve_router._publish(app, f"engine-{pool}", list(ids))


def _cfg(**over):
    from moe_runtime.config import RuntimeConfig

    base = {"model_name": "tiny-moe", "model_source": "-", "pools": [{"name": "cheap"}, {"name": "dear"}],
            "max_batch_size": 2, "max_queue": 4, "cache": {"block_tokens": 4},
            "routing": {"prompt_weight": 0.2, "cached_prompt_weight": 0.01,
                        "dollars_per_work": {"cheap": 1e-6, "dear": 4e-6}}}
    return RuntimeConfig.model_validate({**base, **over})


def test_requests_go_to_the_cheaper_pool_while_it_has_headroom_then_fall_over(info):
    """Two cheap replicas of 2 slots each take the first four streams (named replicas, via route_to); the fifth
    goes to the dear pool, whose replica has headroom, rather than queue on a cheap one."""
    cheap, dear = FakeHandle(ACCEPT, tokens=50), FakeHandle(ACCEPT, tokens=50)
    _serve_says("app-cost", {"cheap": ["c1", "c2"], "dear": ["d1"]})
    eng = RemoteEngine({"cheap": cheap, "dear": dear}, info, _cfg(), "app-cost")

    async def go():
        return [await eng.generate([i] * 3, SamplingParams(max_tokens=8), f"r{i}") for i in range(5)]

    streams = asyncio.run(go())
    assert [s.pool for s in streams] == ["cheap"] * 4 + ["dear"]
    assert sorted(cheap.routes) == ["c1", "c1", "c2", "c2"] and dear.routes == ["d1"]
    assert eng.router_figures()["routed"] == {"cheap": 4, "dear": 1}


def test_a_repeated_prefix_goes_back_to_the_replica_that_holds_it(info):
    h = FakeHandle(ACCEPT, tokens=1)
    _serve_says("app-prefix", {"cheap": ["c1", "c2", "c3"], "dear": []})
    eng = RemoteEngine({"cheap": h, "dear": FakeHandle(ACCEPT)}, info, _cfg(), "app-prefix")
    conversation = list(range(40))

    async def go():
        for turn in range(4):
            stream = await eng.generate(conversation[:24 + 4 * turn], SamplingParams(max_tokens=4), f"t{turn}")
            [ev async for ev in stream]  # finished before the next turn, as a chat's turns are

    asyncio.run(go())
    assert len(set(h.routes)) == 1  # every turn on the replica that prefilled the conversation
    figures = eng.router_figures()["prefix_blocks"]
    assert figures["hit"] == 6 + 7 + 8 and figures["miss"] == 6 + 1 + 1 + 1


def test_at_zero_replicas_a_request_waits_counted_and_proceeds_when_a_replica_is_ready(info):
    h = FakeHandle(ACCEPT)
    _serve_says("app-wake", {"cheap": [], "dear": []})
    eng = RemoteEngine({"cheap": h, "dear": FakeHandle(ACCEPT)}, info, _cfg(wake_deadline_s=30), "app-wake")

    async def go():
        task = asyncio.ensure_future(eng.generate([1, 2], SamplingParams(max_tokens=3), "w"))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if eng.router_figures()["waiting"] == 1:
                break
        assert eng.router_figures()["waiting"] == 1 and not task.done() and h.calls == 0
        _serve_says("app-wake", {"cheap": ["c9"]})
        stream = await asyncio.wait_for(task, 5)
        return stream, [ev async for ev in stream]

    stream, events = asyncio.run(go())
    assert stream.pool == "cheap" and h.routes == ["c9"] and len(events) == 3
    assert eng.router_figures()["waiting"] == 0


def test_at_zero_replicas_past_the_deadline_or_the_queue_is_503_never_a_hang(info):
    from moe_runtime.engine.api import NoReplicaReady

    _serve_says("app-dead", {"cheap": [], "dear": []})
    eng = RemoteEngine({"cheap": FakeHandle(ACCEPT), "dear": FakeHandle(ACCEPT)}, info,
                       _cfg(wake_deadline_s=0.3), "app-dead")
    with pytest.raises(NoReplicaReady) as e:
        asyncio.run(asyncio.wait_for(eng.generate([1], SamplingParams(), "late"), 5))
    assert e.value.retry_after_s > 0 and eng.router_figures()["waiting"] == 0
    eng.waiting = eng.wake_queue  # the bounded queue is full: refused at once
    with pytest.raises(NoReplicaReady):
        asyncio.run(asyncio.wait_for(eng.generate([1], SamplingParams(), "more"), 0.2))


def test_a_replica_serve_no_longer_runs_is_forgotten_by_the_index(info):
    h = FakeHandle(ACCEPT, tokens=1)
    _serve_says("app-gone", {"cheap": ["c1"], "dear": []})
    eng = RemoteEngine({"cheap": h, "dear": FakeHandle(ACCEPT)}, info, _cfg(), "app-gone")

    async def turn(ids, rid):
        stream = await eng.generate(ids, SamplingParams(max_tokens=2), rid)
        [ev async for ev in stream]

    asyncio.run(turn(list(range(20)), "a"))
    assert eng.index.replicas() == ["c1"]
    _serve_says("app-gone", {"cheap": ["c2"]})  # c1 was restarted as c2: its cache is gone
    asyncio.run(turn(list(range(20)), "b"))
    assert eng.index.replicas() == ["c2"] and eng.router_figures()["prefix_blocks"]["hit"] == 0


def test_a_request_counts_as_pending_prefill_on_its_replica_until_its_first_token(info):
    """What the router predicts a replica's next first token from (routing.rank's TTFT headroom)."""
    h = FakeHandle(ACCEPT, tokens=3)
    _serve_says("app-pending", {"cheap": ["c1"], "dear": []})
    eng = RemoteEngine({"cheap": h, "dear": FakeHandle(ACCEPT)}, info, _cfg(), "app-pending")

    async def go():
        stream = await eng.generate(list(range(10)), SamplingParams(max_tokens=3), "p")
        before = dict(eng.pending_prefill)
        await stream.__anext__()
        after = dict(eng.pending_prefill)
        [ev async for ev in stream]
        return before, after

    before, after = asyncio.run(go())
    assert before == {"c1": 10.0} and after == {}


def test_a_call_serve_would_hold_for_ever_ends_at_the_deadline_with_503(info):
    """A pool whose replica set is not known yet (or that went to zero after the ranking): Serve holds the call
    until a replica exists. The ingress gives up at wake_deadline_s, cancels the call and answers 503."""
    from moe_runtime.engine.api import NoReplicaReady

    class Silent(FakeHandle):
        def __init__(self):
            super().__init__(ACCEPT)
            outer = self

            class _Gen:
                cancelled = False

                def __aiter__(self):
                    return self

                async def __anext__(self):
                    await asyncio.sleep(3600)

                def cancel(self):
                    self.cancelled = True

            class _M:
                def remote(self, *a, **k):
                    g = _Gen()
                    outer.gens.append(g)
                    return g

            self.generate = _M()

    h = Silent()
    eng = RemoteEngine({"cheap": h}, info, _cfg(pools=[{"name": "cheap"}], routing=None, wake_deadline_s=0.3))
    with pytest.raises(NoReplicaReady):
        asyncio.run(asyncio.wait_for(eng.generate([1, 2], SamplingParams(), "x"), 5))
    assert h.gens and all(g.cancelled for g in h.gens) and eng.inflight == {"cheap": 0}


def test_a_stream_nobody_closes_still_releases_its_replica(info):
    """A response that never started (client gone before the first byte) leaves its stream unclosed: when it is
    dropped, the router's load and pending prefill for that replica are released, so the replica is not
    counted busy for ever."""
    import gc

    h = FakeHandle(ACCEPT, tokens=3)
    _serve_says("app-leak", {"cheap": ["c1"], "dear": []})
    eng = RemoteEngine({"cheap": h, "dear": FakeHandle(ACCEPT)}, info, _cfg(), "app-leak")

    async def go():
        stream = await eng.generate(list(range(10)), SamplingParams(max_tokens=3), "leak")
        assert eng.replica_load == {"c1": 1} and eng.pending_prefill == {"c1": 10.0}
        del stream
        gc.collect()

    asyncio.run(go())
    assert eng.replica_load == {} and eng.pending_prefill == {} and h.gens[0].cancelled


def test_requests_decided_at_the_same_moment_spread_instead_of_piling_on_one_replica(info):
    """Twenty identical prompts arrive together: each replica's load counts from the routing decision, so they
    spread 7/7/6 over three replicas of one pool instead of all seeing the same idle replica."""
    h = FakeHandle(ACCEPT, tokens=2)
    _serve_says("app-burst", {"cheap": ["r1", "r2", "r3"], "dear": []})
    eng = RemoteEngine({"cheap": h, "dear": FakeHandle(ACCEPT)}, info,
                       _cfg(max_batch_size=20, cache={"prefix": False}), "app-burst")

    async def go():
        return await asyncio.gather(*(eng.generate([5, 6, 7], SamplingParams(max_tokens=2), f"b{i}")
                                      for i in range(20)))

    asyncio.run(go())
    counts = sorted(h.routes.count(r) for r in ("r1", "r2", "r3"))
    assert counts == [6, 7, 7], h.routes


def test_a_long_prompt_goes_around_a_short_answer_it_would_stretch_past_its_tpot(info):
    """A 3-token answer decodes on the cheap replica with ~0.2 s of TPOT slack; a 40-token prompt is 0.4 s of
    prefill there (100 tokens/s), which would push it past 0.1 s per token: the prompt goes to the dear pool.
    Once the answer's stream ends the same prompt goes to the cheap replica (routing.InterferenceLedger)."""
    cfg = _cfg(routing={"prompt_weight": 0.2, "cached_prompt_weight": 0.01,
                        "dollars_per_work": {"cheap": 1e-6, "dear": 4e-6},
                        "prefill_tps": {"cheap": 100.0, "dear": 100.0}, "decode_tps": {"cheap": 1000.0, "dear": 1000.0},
                        "ttft_target_s": 100.0, "tpot_target_s": 0.1})
    cheap, dear = FakeHandle(ACCEPT, tokens=3), FakeHandle(ACCEPT, tokens=3)
    _serve_says("app-tpot", {"cheap": ["c1"], "dear": ["d1"]})
    eng = RemoteEngine({"cheap": cheap, "dear": dear}, info, cfg, "app-tpot")
    long_prompt = [0] * 40

    async def go():
        short = await eng.generate([1, 2, 3], SamplingParams(max_tokens=3), "short")
        around = await eng.generate(long_prompt, SamplingParams(max_tokens=3), "long")
        [ev async for ev in short]
        [ev async for ev in around]
        after = await eng.generate(long_prompt, SamplingParams(max_tokens=3), "later")
        [ev async for ev in after]
        return short.pool, around.pool, after.pool

    assert asyncio.run(go()) == ("cheap", "dear", "cheap")
    assert len(eng.ledger) == 0   # every stream that ended left the ledger


def test_a_replica_gone_from_serve_leaves_the_ledger_even_without_a_prefix_index(info):
    """Short prompts (under one cache block) never enter the prefix index: the replica's ledger, arrival and
    pending entries must still go when Serve no longer runs it."""
    cfg = _cfg(cache={"block_tokens": 64},
               routing={"prompt_weight": 0.2, "cached_prompt_weight": 0.01,
                        "dollars_per_work": {"cheap": 1e-6, "dear": 4e-6},
                        "prefill_tps": {"cheap": 100.0, "dear": 100.0}, "decode_tps": {"cheap": 1e3, "dear": 1e3},
                        "ttft_target_s": 100.0, "tpot_target_s": 0.1})
    h = FakeHandle(ACCEPT, tokens=2)
    _serve_says("app-churn", {"cheap": ["c1"], "dear": []})
    eng = RemoteEngine({"cheap": h, "dear": FakeHandle(ACCEPT)}, info, cfg, "app-churn")

    async def turn(rid):
        stream = await eng.generate([1, 2, 3], SamplingParams(max_tokens=2), rid)
        [ev async for ev in stream]

    asyncio.run(turn("a"))
    assert eng.ledger.replicas() == ["c1"] and eng.index.replicas() == []
    _serve_says("app-churn", {"cheap": ["c2"]})
    asyncio.run(turn("b"))
    assert eng.ledger.replicas() == ["c2"] and set(eng.sent.replicas()) == {"c2"}


def test_the_slack_is_taken_at_a_full_batch_step(info):
    """The batch may fill while a short answer decodes: its slack is (n - 1) x (target - the full batch's step).
    Slots 2 at 20 tokens/s: a full step is 0.1 s, the TPOT target itself, so a short answer has no slack to
    protect (None) and a long prompt may land beside it; with the step of its own batch (0.06 s) it had 0.08 s."""
    cfg = _cfg(routing={"prompt_weight": 0.2, "cached_prompt_weight": 0.01,
                        "dollars_per_work": {"cheap": 1e-6, "dear": 4e-6},
                        "prefill_tps": {"cheap": 100.0, "dear": 100.0}, "decode_tps": {"cheap": 20.0, "dear": 20.0},
                        "ttft_target_s": 100.0, "tpot_target_s": 0.1})
    _serve_says("app-full", {"cheap": ["c1"], "dear": ["d1"]})
    eng = RemoteEngine({"cheap": FakeHandle(ACCEPT), "dear": FakeHandle(ACCEPT)}, info, cfg, "app-full")
    attempts, _, slack = eng._attempts({"cheap": ["c1"], "dear": ["d1"]}, [1, 2, 3], SamplingParams(max_tokens=3))
    assert slack == {"c1": None, "d1": None}
    cfg.routing.decode_tps.update({"cheap": 40.0, "dear": 40.0})   # full step 0.05 s: 2 x 0.05 of slack
    eng = RemoteEngine({"cheap": FakeHandle(ACCEPT), "dear": FakeHandle(ACCEPT)}, info, cfg, "app-full")
    _, _, slack = eng._attempts({"cheap": ["c1"], "dear": ["d1"]}, [1, 2, 3], SamplingParams(max_tokens=3))
    assert slack["c1"] == pytest.approx(2 * (0.1 - 0.05))
