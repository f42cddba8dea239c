"""Routing in the replica model (issue 12): per-replica prefix caches fed by the trace's block ids, and the
least-loaded, random and prefix-aware (moe_runtime.routing) routers."""
import json

import numpy as np
import pytest

from moe_operator.autoscaling import PoolModel, Settings, WorkWeights
from moe_operator.autoscaling.simulate import run as runmod
from moe_operator.autoscaling.simulate.replicas import (PrefixAwareRouter, RandomRouter, ReplicaReplay, least_loaded,
                                                        make_router)
from moe_operator.autoscaling.simulate.serving import ServingProfile
from moe_operator.autoscaling.simulate.traces import Trace, load_trace
from moe_operator.cli.main import main
from moe_runtime import routing

W = WorkWeights(prompt=0.1, cached_prompt=0.01)
BT = 512
PROF = ServingProfile(max_batch=8, kv_tokens=1_000_000, prefill_tps=20_000.0, cached_prefill_tps=200_000.0,
                      step_base_s=0.01, step_per_seq_s=0.002, prefill_chunk_tokens=2048)


def pool(name="gpu", price=3.6, capacity=100.0):
    return PoolModel(name, price_per_hour=price, capacity=capacity, min_replicas=0, max_replicas=8, cold_start_s=0.0,
                     prefill_tps=PROF.prefill_tps)


def blocks_trace(rows, output=20.0):
    """rows: (arrival s, block ids, prompt tokens), in any order -> a Trace whose ``cached`` is the unlimited
    fleet-wide cache's (as the Mooncake loader computes it) and whose ``blocks`` are the ids."""
    rows = sorted(rows, key=lambda r: r[0])
    seen, cached = set(), []
    for _, bl, n in rows:
        k = 0
        for b in bl:
            if b not in seen:
                break
            k += 1
        seen.update(bl)
        cached.append(min(n, k * BT))
    n = np.array([r[2] for r in rows], float)
    c = np.array(cached, float)
    out = np.full(len(rows), float(output)) if np.isscalar(output) else np.asarray(output, float)
    return Trace("blocks", np.array([r[0] for r in rows], float), n - c, c, out,
                 blocks=tuple(tuple(r[1]) for r in rows), block_tokens=BT)


def conversations(n_conv=16, turns=6, gap_s=20.0, first=4, grow=2):
    """Multi-turn conversations: turn t of conversation c re-sends its whole history (``first + grow x t`` blocks,
    ids unique to the conversation and chained) ``gap_s`` after the last turn; conversations interleave."""
    return [(c * gap_s / n_conv + t * gap_s, [c * 10_000 + k for k in range(first + grow * t)],
             (first + grow * t) * BT) for c in range(n_conv) for t in range(turns)]


def replay(tr, replicas, router=least_loaded, cache_blocks=None, pools=None, prof=PROF):
    pools = pools or [pool()]
    r = ReplicaReplay(tr, pools, W, 10.0, 1.0, cold_start=False, profiles={p.name: prof for p in pools},
                      router=router, cache_blocks=cache_blocks)
    r.apply({pools[0].name: replicas} if isinstance(replicas, int) else replicas, 0.0)
    return r


def run_until_done(r, limit=3000, start=0):
    t = start
    while not r.done and t < limit:
        r.step(float(t))
        t += 1
    assert r.done
    return r


def test_mooncake_blocks_are_kept_in_arrival_order_and_other_traces_have_none(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"timestamp": 3000, "input_length": 1100, "output_length": 5, "hash_ids": [1, 2, 3]}\n'
                 '{"timestamp": 0, "input_length": 600, "output_length": 7, "hash_ids": [7, 8]}\n'
                 '{"timestamp": 1000, "input_length": 900, "output_length": 1, "hash_ids": [1, 2]}\n')
    t = load_trace(m)
    assert t.blocks == ((7, 8), (1, 2), (1, 2, 3)) and t.block_tokens == 512
    assert list(t.cached) == [0, 0, 1024]          # the fleet-wide unlimited cache, in arrival order
    a = tmp_path / "a.csv"
    a.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,100,10\n")
    assert load_trace(a).blocks is None
    empty = tmp_path / "e.jsonl"
    empty.write_text('{"timestamp": 0, "input_length": 6, "output_length": 7, "hash_ids": []}\n')
    assert load_trace(empty).blocks is None


def test_one_replica_with_room_serves_the_trace_s_own_cache_hits():
    """One replica whose cache holds everything, requests far apart: its hits are the unlimited cache's, and the
    replay (TTFT, TPOT) is the one without blocks, where the trace's cached tokens are used as given."""
    tr = blocks_trace(conversations(n_conv=4, turns=4), output=30.0)
    plain = Trace(tr.name, tr.arrival_s, tr.prompt, tr.cached, tr.output)
    a, b = run_until_done(replay(tr, 1, cache_blocks=10_000)), run_until_done(replay(plain, 1))
    assert a.cache_hit_ratio() == pytest.approx(tr.cache_hit_ratio) and tr.cache_hit_ratio > 0.5
    assert a.ttft == pytest.approx(b.ttft) and a.tpot == pytest.approx(b.tpot)
    assert a.tokens_by_pool["gpu"] == pytest.approx(b.tokens_by_pool["gpu"])


def test_without_blocks_the_cache_size_changes_nothing_and_the_fleet_cache_is_kept_on_request():
    """No blocks: the trace's fleet-wide cached tokens, whatever cache_blocks says (even 0); a trace with blocks
    replayed with per_replica_cache=False is the same replay (``--prefix-cache fleet``)."""
    rows = conversations(n_conv=8, turns=3, gap_s=5.0)
    tr = blocks_trace(rows)
    plain = Trace(tr.name, tr.arrival_s, tr.prompt, tr.cached, tr.output)
    a = run_until_done(replay(plain, 3))
    b = run_until_done(replay(plain, 3, cache_blocks=0))
    assert np.array_equal(a.ttft, b.ttft) and np.array_equal(a.tpot, b.tpot)
    assert a.tokens_by_pool["gpu"][1] == pytest.approx(plain.cached.sum())
    fleet = ReplicaReplay(tr, [pool()], W, 10.0, 1.0, cold_start=False, profiles={"gpu": PROF},
                          cache_blocks=0, per_replica_cache=False)
    fleet.apply({"gpu": 3}, 0.0)
    run_until_done(fleet)
    assert np.array_equal(fleet.ttft, a.ttft) and np.array_equal(fleet.tpot, a.tpot)
    assert run_until_done(replay(tr, 3, cache_blocks=0)).cache_hit_ratio() == 0.0   # per replica: nothing held


def test_a_request_hits_only_what_its_own_replica_holds_and_the_hit_shortens_its_prefill():
    """Turn 2 sent to the replica that prefilled turn 1 gets the shared prefix at the cached rate; sent to the
    other replica it computes everything."""
    rows = [(0.0, [1, 2, 3, 4], 4 * BT), (10.0, [1, 2, 3, 4, 5, 6], 6 * BT)]
    tr = blocks_trace(rows)
    same = run_until_done(replay(tr, 2, router=lambda reps, i: 0))
    other = run_until_done(replay(tr, 2, router=lambda reps, i: i))
    assert same.ttft[1] == pytest.approx(PROF.prefill_s(2 * BT, 4 * BT))
    assert other.ttft[1] == pytest.approx(PROF.prefill_s(6 * BT, 0))
    assert same.cache_hit_ratio() == pytest.approx(4 / 10) and other.cache_hit_ratio() == 0.0


def test_the_cache_is_an_lru_that_evicts_a_prompt_s_tail_first():
    """A 4-block cache after prompt A (4 blocks) and then B (2 blocks): A's head stays (vLLM frees a prompt's
    blocks tail first), so a request re-sending A hits 2 blocks; a 0-block cache never hits."""
    rows = [(0.0, [1, 2, 3, 4], 4 * BT), (5.0, [8, 9], 2 * BT), (10.0, [1, 2, 3, 4], 4 * BT)]
    r = run_until_done(replay(blocks_trace(rows), 1, cache_blocks=4))
    assert r.cached_served == [0.0, 0.0, 2 * BT]
    assert run_until_done(replay(blocks_trace(rows), 1, cache_blocks=0)).cache_hit_ratio() == 0.0


def test_a_removed_replica_loses_its_cache_and_a_new_one_starts_empty():
    rows = [(0.0, [1, 2, 3, 4], 4 * BT), (20.0, [1, 2, 3, 4, 5], 5 * BT)]
    tr = blocks_trace(rows)
    kept = run_until_done(replay(tr, 1, router=make_router("prefix-aware")))
    assert kept.cached_served[1] == 4 * BT
    router = make_router("prefix-aware")
    r = replay(tr, 1, router=router)
    for t in range(10):
        r.step(float(t))
    held = r.fleet.active[0].rid
    assert router._index["gpu"].replicas() == [held]
    r.apply({"gpu": 0}, 10.0)
    r.apply({"gpu": 1}, 10.0)           # a new replica, started (no cold start in this replay) with no cache
    assert router._index["gpu"].replicas() == []
    run_until_done(r, start=10)
    assert r.cached_served[1] == 0.0 and r.ttft[1] == pytest.approx(PROF.prefill_s(5 * BT, 0))


def test_prefix_aware_keeps_conversations_where_their_history_is():
    """16 interleaved conversations on 4 replicas, each replica's cache big enough for all of them: prefix-aware
    routing keeps a conversation on its replica and hits about what one replica with the fleet's cache would;
    least-loaded and random spread the turns and lose most of it. With caches that hold only a quarter of the
    conversations each, prefix-aware still keeps most of it and least-loaded almost none."""
    tr = blocks_trace(conversations(), output=400.0)
    one = run_until_done(replay(tr, 1, cache_blocks=4000)).cache_hit_ratio()
    assert one == pytest.approx(tr.cache_hit_ratio) and one > 0.5
    hit = {name: run_until_done(replay(tr, 4, router=make_router(name), cache_blocks=1000)).cache_hit_ratio()
           for name in ("prefix-aware", "least-loaded", "random")}
    assert hit["prefix-aware"] >= 0.9 * one
    assert hit["least-loaded"] < 0.75 * one and hit["random"] < 0.75 * one
    small = {name: run_until_done(replay(tr, 4, router=make_router(name), cache_blocks=60)).cache_hit_ratio()
             for name in ("prefix-aware", "least-loaded")}
    assert small["prefix-aware"] >= 0.75 * one and small["least-loaded"] < 0.25 * one


def test_prefix_aware_sees_replicas_as_the_live_router_does():
    """Replica(load, slots = max_batch, limit = max_batch + max_queue, $/work of its pool): the cheap pool is
    preferred while it has free slots, then the dear one, then queues, and a request every replica is full for
    is counted (429 live) and queued on the least-loaded replica instead of dropped."""
    prof = ServingProfile(max_batch=2, kv_tokens=1_000_000, prefill_tps=1000.0, cached_prefill_tps=10_000.0,
                          step_base_s=0.01, step_per_seq_s=0.002)
    pools = [pool("cheap", price=1.0), pool("dear", price=2.0)]
    tr = blocks_trace([(0.0, [i], 100) for i in range(7)], output=500.0)
    router = PrefixAwareRouter(max_queue=1)
    r = replay(tr, {"cheap": 1, "dear": 1}, router=router, pools=pools, prof=prof)
    r.step(0.0)
    cheap, dear = r.fleet.active
    # 2 on cheap (its slots), 2 on dear (its slots), then 1 queued on each (limit 3), the 7th finds both full
    assert (cheap.load, dear.load) == (4, 3) and router.full == 1
    assert [i for i in range(7) if i in cheap.prefill or i in cheap.waiting or any(i == d[1] for d in cheap.dec)] \
        == [0, 1, 4, 6]


def test_random_routing_is_seeded_and_uses_every_replica():
    tr = blocks_trace([(0.0, [i], 100) for i in range(200)], output=2000.0)
    loads = []
    for _ in range(2):
        r = replay(tr, 4, router=RandomRouter(seed=3))
        r.step(0.0)
        loads.append([x.load for x in r.fleet.active])
    assert loads[0] == loads[1] and min(loads[0]) > 25
    r = replay(tr, 4, router=RandomRouter(seed=4))
    r.step(0.0)
    assert [x.load for x in r.fleet.active] != loads[0]


def test_run_replay_counts_served_tokens_and_reports_hits_and_latency():
    """With per-replica caches the work of a request depends on its replica, so $/1M divides by the tokens
    actually served (every prompt and output token once), not by work converted at the trace's mix."""
    tr = blocks_trace(conversations(), output=400.0)
    pools = [pool()]
    s = Settings(interval_s=30.0, ttft_p95_s=5.0, tpot_p95_s=0.2, weights=W)
    fixed = type("Fixed", (), {"name": "fixed", "__call__": lambda self, obs, rep, now: {"gpu": 4}})()
    res = {name: runmod.replay(tr, pools, s, fixed, cold_start=False, profiles={"gpu": PROF}, router=name,
                               cache_blocks=1000) for name in ("least-loaded", "prefix-aware")}
    for name, r in res.items():
        assert r.served_tokens == pytest.approx(tr.total_tokens)
        t = r.tokens_by_pool["gpu"]
        assert r.cache_hit_ratio == pytest.approx(t["cached_prompt"] / (t["prompt"] + t["cached_prompt"]))
        assert r.router == name and r.cache_blocks == {"gpu": 1000}
        assert 0 < r.ttft_p50_s <= r.ttft_p95_s
    assert res["prefix-aware"].cache_hit_ratio > res["least-loaded"].cache_hit_ratio + 0.2
    assert res["prefix-aware"].ttft_p95_s < res["least-loaded"].ttft_p95_s   # hits prefill 10x faster


def test_the_cli_reports_the_router_and_hits_and_refuses_router_with_the_fluid_model(tmp_path, capsys):
    from pathlib import Path
    spec = Path(__file__).resolve().parents[2] / "bench" / "autoscale_two_pool.yaml"
    f = tmp_path / "conv.jsonl"
    f.write_text("".join(json.dumps({"timestamp": int(t * 1000), "input_length": n, "output_length": 50,
                                     "hash_ids": bl}) + "\n" for t, bl, n in conversations(n_conv=8, turns=4)))
    base = ["simulate", "--trace", str(f), "--spec", str(spec), "--policy", "static-peak", "--json"]
    docs = {}
    for name in ("least-loaded", "prefix-aware"):
        assert main(base + ["--router", name]) == 0
        docs[name] = json.loads(capsys.readouterr().out)
    for name, doc in docs.items():
        assert doc["router"] == name and doc["trace"]["blockTokens"] == 512
        assert set(doc["cacheBlocksPerReplica"]) == {"h800", "ascend"}
        p = doc["policies"]["static-peak"]
        assert 0 <= p["cacheHitRatio"] <= doc["trace"]["cacheHitRatio"] + 1e-9 and p["ttftP95Seconds"] > 0
    assert main(base + ["--model", "fluid", "--router", "random"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--model replica" in err[0]
    assert main(base + ["--model", "fluid"]) == 0          # no --router: the fluid model runs as before
    assert json.loads(capsys.readouterr().out)["router"] is None
    assert main(base + ["--prefix-cache", "fleet"]) == 0    # the trace's fleet-wide hits, as before issue 12
    doc = json.loads(capsys.readouterr().out)
    assert doc["cacheBlocksPerReplica"] is None
    assert doc["policies"]["static-peak"]["cacheHitRatio"] == pytest.approx(doc["trace"]["cacheHitRatio"], abs=1e-4)


# ---- what the simulator showed about moe_runtime.routing: each failed before routing.py's fix -------------------

def test_index_keeps_a_prompt_s_head_as_a_vllm_replica_does():
    idx = routing.PrefixIndex(blocks_per_replica=4)
    idx.record("r", ["a0", "a1", "a2", "a3"])
    idx.record("r", ["b0", "b1"])
    assert idx.match(["a0", "a1", "a2", "a3"], ["r"]) == {"r": 2}


def test_new_prefixes_spread_over_idle_replicas():
    reps = [routing.Replica(f"r{i}", "a", 0, 8, 16, 1e-6) for i in range(4)]
    chosen = {routing.rank(reps, {}, prompt_tokens=1024, output_tokens=10, block_tokens=BT,
                           affinity_key=str(k).encode())[0].id for k in range(40)}
    assert len(chosen) > 1


def three_routers(tr, pools, prof, fleet, targets, blind):
    """The trace replayed to the end by least-loaded, prefix-aware, and prefix-aware with ``blind(router)``
    switching one of its guards off ("blind"), each on ``fleet`` with (TTFT, TPOT) ``targets``."""
    out = {}
    for key, name in (("least-loaded", "least-loaded"), ("prefix-aware", "prefix-aware"), ("blind", "prefix-aware")):
        router = make_router(name)
        r = ReplicaReplay(tr, pools, W, *targets, cold_start=False, profiles={p.name: prof for p in pools},
                          router=router)
        if key == "blind":
            blind(router)
        r.apply(dict(fleet), 0.0)
        out[key] = run_until_done(r)
    return out


def test_prefix_aware_does_not_pile_long_prompts_onto_the_cheap_pool():
    """Long prompts, a 3 s TTFT target: the cheap pool takes requests only while its predicted first token meets
    the target, so attainment stays at least-loaded's. Without that guard (headroom = batch slots alone, the rule
    before) the cheap pool's prefill queue made a third of the requests miss."""
    rng = np.random.default_rng(5)
    n = 400       # two requests/s of 4k-12k-token prompts on 4 replicas
    rows = [(float(t), [100_000 + i], int(p)) for i, (t, p) in
            enumerate(zip(np.sort(rng.uniform(0, 300, n)), rng.integers(4000, 12000, n)))]
    tr = blocks_trace(rows, output=200.0)
    prof = ServingProfile(max_batch=32, kv_tokens=10_000_000, prefill_tps=8000.0, cached_prefill_tps=80_000.0,
                          step_base_s=0.02, step_per_seq_s=0.001)
    pools = [pool("cheap", price=1.0, capacity=1000.0), pool("dear", price=1.5, capacity=1000.0)]

    def blind(router):
        router._ttft = None   # the rule before: no TTFT prediction in the headroom

    done = three_routers(tr, pools, prof, {"cheap": 2, "dear": 2}, (3.0, 1.0), blind)
    met = {k: float((r.ttft <= 3.0).mean()) for k, r in done.items()}
    assert met["prefix-aware"] >= met["least-loaded"] - 0.01 >= 0.98
    assert met["blind"] < 0.9


def test_prefix_aware_keeps_short_answers_clear_of_long_prefills():
    """Code completion (the Azure code trace's shape): bursts of 1k-7k-token prompts with 5-20-token answers and a
    loose 10 s TTFT target. A short answer carries well under a second of others' prefill before its TPOT misses
    0.1 s, so where one long prompt lands decides it. The router counts, per replica, the requests a prefill would
    push past the target (routing.InterferenceLedger) and sends it where it breaks none: TPOT attainment at least
    least-loaded's. Without the ledger (the mean-rate guard alone, the rule before) the cheap pool's replicas
    took the bursts and far more short answers missed."""
    rng = np.random.default_rng(7)
    rows, outs, t = [], [], 0.0
    while len(rows) < 600:    # a burst of 2-6 requests within 0.3 s every ~2 s
        t += float(rng.exponential(2.0))
        for _ in range(int(rng.integers(2, 7))):
            rows.append((t + float(rng.uniform(0, 0.3)), [200_000 + len(rows)], int(rng.integers(1000, 7500))))
            outs.append(float(rng.integers(5, 21)))
    order = np.argsort([r[0] for r in rows], kind="stable")
    tr = blocks_trace(rows, output=np.array(outs)[order])
    prof = ServingProfile(max_batch=32, kv_tokens=10_000_000, prefill_tps=8000.0, cached_prefill_tps=80_000.0,
                          step_base_s=0.0192, step_per_seq_s=0.0004, prefill_chunk_tokens=2048)
    pools = [pool("cheap", price=1.0, capacity=1000.0), pool("dear", price=1.6, capacity=1000.0)]

    class Blind(routing.InterferenceLedger):
        def breaks(self, replica, prefill_s):
            return 0

    def blind(router):
        router._ledger = Blind()

    done = three_routers(tr, pools, prof, {"cheap": 3, "dear": 3}, (10.0, 0.1), blind)
    met = {k: float((r.tpot <= 0.1).mean()) for k, r in done.items()}
    assert met["prefix-aware"] >= met["least-loaded"] - 0.01
    assert met["blind"] < met["prefix-aware"] - 0.05, met


def test_the_router_s_ttft_prediction_is_the_replica_model_s_on_a_busy_replica(monkeypatch):
    """The prefix-aware router predicts each first token from the prompt queued on its replica at the rate the
    decode batch leaves the prefill (routing.prefill_rate). On replicas that decode all the time the prediction
    must match what the replica model then does: the full prefill rate predicted ~20% early and let the cheap
    pool fill past a tight TTFT target."""
    rng = np.random.default_rng(3)
    n = 300
    rows = [(float(t), [300_000 + i], int(p)) for i, (t, p) in
            enumerate(zip(np.sort(rng.uniform(0, 300, n)), rng.integers(2000, 6000, n)))]
    tr = blocks_trace(rows, output=200.0)   # ~6 sequences decoding at a time, all on the cheap replica
    prof = ServingProfile(max_batch=16, kv_tokens=10_000_000, prefill_tps=20_000.0, cached_prefill_tps=200_000.0,
                          step_base_s=0.02, step_per_seq_s=0.001, prefill_chunk_tokens=2048)
    predicted = []
    real_rank = routing.rank

    def spy(view, matched, **kw):
        out = real_rank(view, matched, **kw)
        r = out[0]
        # requests that find no prompt queued there: their first token is their own prefill beside the batch
        predicted.append(kw["prompt_tokens"] / r.prefill_tps if r.pending_prefill == 0 else np.nan)
        return out

    monkeypatch.setattr(routing, "rank", spy)
    pools = [pool("cheap", price=1.0, capacity=1000.0), pool("dear", price=1.5, capacity=1000.0)]
    r = ReplicaReplay(tr, pools, W, 100.0, 1.0, cold_start=False, profiles={p.name: prof for p in pools},
                      router=make_router("prefix-aware"))
    r.apply({"cheap": 1, "dear": 1}, 0.0)
    actual = run_until_done(r).ttft
    ratio = (actual / np.array(predicted))[20:]   # past the first requests, the replica decodes
    ratio = ratio[np.isfinite(ratio)]
    assert len(ratio) > 100 and 0.95 <= float(np.median(ratio)) <= 1.05, float(np.median(ratio))
