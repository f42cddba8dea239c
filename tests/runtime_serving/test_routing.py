"""The router's decision (moe_runtime.routing) as a pure function: cost, prefix affinity, bounded load, fall over."""
from __future__ import annotations

import random

import pytest

from moe_runtime.routing import (PrefixIndex, Replica, Weights, block_hashes, dollars_per_work, rank,
                                 request_work)

CHEAP = dollars_per_work(1.0, 1000.0)
DEAR = dollars_per_work(4.0, 1000.0)


def _rep(rid, pool="a", load=0, slots=4, limit=8, dpw=CHEAP):
    return Replica(id=rid, pool=pool, load=load, slots=slots, limit=limit, dollars_per_work=dpw)


def _first(replicas, matched=None, prompt=512, out=64, block=64):
    order = rank(replicas, matched or {}, prompt_tokens=prompt, output_tokens=out, block_tokens=block)
    return order[0].id if order else None


def test_block_hashes_are_chained_prefix_keys():
    a = list(range(300))
    b = a[:128] + [9999] + a[129:]
    ha, hb = block_hashes(a, 64), block_hashes(b, 64)
    assert len(ha) == 4  # full blocks only: 300 // 64
    assert ha[:2] == hb[:2]
    assert ha[2] != hb[2] and ha[3] != hb[3]  # one changed token changes every later block's key
    assert block_hashes(a, 64) == ha  # deterministic (the index compares hashes made by other calls)
    with pytest.raises(ValueError):
        block_hashes(a, 0)


def test_index_matches_longest_held_prefix_and_forgets_evicted_blocks():
    idx = PrefixIndex(blocks_per_replica=3)
    idx.record("r1", ["x", "y", "z"])
    assert idx.match(["x", "y", "q"], ["r1", "r2"]) == {"r1": 2, "r2": 0}
    idx.record("r1", ["p"])  # capacity 3: the prompt's tail "z" goes first, its head (shared by more) stays
    assert idx.match(["x", "y", "z"], ["r1"]) == {"r1": 2}
    idx.record("r1", ["q", "s"])
    assert idx.match(["x", "y"], ["r1"]) == {"r1": 0}
    idx.forget("r1")
    assert idx.match(["p"], ["r1"]) == {"r1": 0}


def test_cheaper_pool_preferred_while_it_has_headroom():
    reps = [_rep("c1", "cheap", load=3), _rep("d1", "dear", load=0, dpw=DEAR)]
    assert _first(reps) == "c1"
    full = [_rep("c1", "cheap", load=4), _rep("d1", "dear", load=0, dpw=DEAR)]  # cheap at its slots
    assert _first(full) == "d1"


def test_prefix_hit_wins_within_a_pool_and_across_pools_only_when_it_pays():
    reps = [_rep("a1", load=0), _rep("a2", load=1)]
    assert _first(reps, {"a2": 8}) == "a2"  # the held prefix beats the emptier replica of the same price
    # Across pools: a long cached prompt on the dear pool saves more than the price gap on a short output ...
    cross = [_rep("c1", "cheap", dpw=CHEAP), _rep("d1", "dear", dpw=DEAR * 0 + CHEAP * 1.5)]
    assert _first(cross, {"d1": 64}, prompt=4096, out=16) == "d1"
    # ... and not when the output dominates the work.
    assert _first(cross, {"d1": 64}, prompt=4096, out=4000) == "c1"


def test_bounded_load_stops_a_hot_prefix_from_swamping_one_replica():
    """Every request shares one prefix held by r1: r1 takes them only up to balance x the pool's mean."""
    loads = {"r1": 0, "r2": 0, "r3": 0, "r4": 0}
    for _ in range(12):
        reps = [_rep(r, load=n, slots=16, limit=32) for r, n in loads.items()]
        loads[_first(reps, {"r1": 4})] += 1
    assert loads["r1"] < 12
    assert max(loads.values()) <= 1.25 * (sum(loads.values()) / 4) + 2  # c x mean + 1, plus the last arrival


def test_fall_over_orders_queues_and_empty_when_every_replica_is_full():
    reps = [_rep("a1", load=6, slots=4, limit=8), _rep("a2", load=5, slots=4, limit=8),
            _rep("b1", "b", load=8, slots=4, limit=8, dpw=DEAR)]
    order = [r.id for r in rank(reps, {}, prompt_tokens=10, output_tokens=10, block_tokens=64)]
    assert order == ["a2", "a1"]  # shortest queue first; b1 is at its limit and never ranked
    assert rank([_rep("x", load=8, limit=8)], {}, prompt_tokens=1, output_tokens=1, block_tokens=64) == []


def test_request_work_never_counts_the_whole_prompt_as_cached():
    w = Weights(prompt=0.2, cached_prompt=0.01, generated=1.0)
    assert request_work(100, 100, 0, w) == pytest.approx(0.2 * 1 + 0.01 * 99)  # the last token is computed
    assert request_work(100, 0, 10, w) == pytest.approx(30.0)
    assert dollars_per_work(1.0, 0.0) == float("inf")


def test_prefix_aware_keeps_conversations_on_their_replica():
    """Multi-turn conversations (a turn extends the last prompt and starts after the last turn finished): with
    the index the router sends a turn where its history is, so the hit ratio with 4 replicas stays near one
    replica's; least-loaded spreads them and loses most of it."""

    def run(prefix_aware: bool, n: int) -> float:
        rng = random.Random(7)
        convs = [[rng.randrange(50_000) for _ in range(256)] for _ in range(32)]
        turn = [0] * len(convs)
        idx, loads, running, hit, total = PrefixIndex(10_000), {f"r{i}": 0 for i in range(n)}, [], 0, 0
        for step in range(400):
            for f, c, rid in [x for x in running if x[0] <= step]:
                loads[rid] -= 1
                turn[c] += 1
            running = [x for x in running if x[0] > step]
            busy = {c for _, c, _ in running}
            for c in range(len(convs)):
                if c in busy or turn[c] >= 8 or rng.random() > 0.3:
                    continue
                prompt = convs[c] + [c * 100 + turn[c]] * 64 * turn[c]  # one more block per turn
                hs = block_hashes(prompt, 64)
                reps = [_rep(r, load=loads[r], slots=8, limit=64) for r in loads]
                order = rank(reps, idx.match(hs, loads) if prefix_aware else {}, prompt_tokens=len(prompt),
                             output_tokens=32, block_tokens=64)
                rid = order[0].id
                hit += idx.match(hs, [rid])[rid]
                total += len(hs)
                idx.record(rid, hs)
                loads[rid] += 1
                running.append((step + rng.randint(1, 10), c, rid))
        return hit / total

    one = run(True, 1)
    assert one > 0.3  # the workload has reuse to find
    assert run(True, 4) >= 0.9 * one
    assert run(False, 4) < 0.75 * one


def test_headroom_ends_where_the_predicted_first_token_misses_the_target():
    """A cheap replica with 3 long prompts queued for prefill would answer past the 2 s TTFT target: the request
    goes to the dear pool, which meets it; with no target the cheap replica's free slot wins."""
    cheap = _rep("c1", "cheap", load=3, slots=8, limit=16)
    cheap = Replica(**{**cheap.__dict__, "prefill_tps": 1000.0, "pending_prefill": 3000.0})
    dear = Replica(**{**_rep("d1", "dear", dpw=DEAR).__dict__, "prefill_tps": 1000.0})
    args = dict(prompt_tokens=500, output_tokens=50, block_tokens=64)
    assert rank([cheap, dear], {}, ttft_target_s=2.0, **args)[0].id == "d1"
    assert rank([cheap, dear], {}, **args)[0].id == "c1"
    both_late = rank([cheap, Replica(**{**dear.__dict__, "pending_prefill": 9000.0})], {}, ttft_target_s=2.0,
                     **args)
    assert [r.id for r in both_late] == ["c1", "d1"]  # neither meets it: the sooner first token first


def test_new_prompts_spread_over_idle_replicas_by_their_first_block():
    """Rendezvous hashing: idle equal replicas get new conversations spread by prompt, not all on the first id,
    and the same prompt maps to the same replica."""
    reps = [_rep(f"r{i}") for i in range(4)]
    picks = [rank(reps, {}, prompt_tokens=100, output_tokens=10, block_tokens=64,
                  affinity_key=block_hashes([k] * 64, 64)[0])[0].id for k in range(40)]
    assert len(set(picks)) == 4 and max(picks.count(r) for r in set(picks)) <= 20
    again = rank(reps, {}, prompt_tokens=100, output_tokens=10, block_tokens=64,
                 affinity_key=block_hashes([0] * 64, 64)[0])[0].id
    assert again == picks[0]


def test_predicted_tpot_follows_the_prefill_that_keeps_arriving():
    """Chunked prefill (vLLM): no arrivals = the decode step; arrivals at the engine's prefill rate = every step
    carries a chunk; in between, time per token = 1 / tokens per second over both kinds of step. Whole-prompt
    prefill (the torch engine): decode gets the time prefill leaves."""
    from moe_runtime.routing import predicted_tpot

    step, tps, chunk = 0.03, 5000.0, 2048
    chunk_s = chunk / tps
    assert predicted_tpot(step, 0.0, tps, chunk) == pytest.approx(step)
    assert predicted_tpot(step, tps, tps, chunk) == pytest.approx(step + chunk_s)
    # one 7000-token prompt per 10 s: prefill pending 15% of the time, 1.3% of the steps
    p = 700 / tps * (step + chunk_s) / chunk_s
    assert predicted_tpot(step, 700.0, tps, chunk) == pytest.approx(1 / (p / (step + chunk_s) + (1 - p) / step))
    assert step < predicted_tpot(step, 700.0, tps, chunk) < 0.04
    assert predicted_tpot(step, 2500.0, tps, 0) == pytest.approx(step / 0.5)
    assert predicted_tpot(step, 6000.0, tps, 0) == float("inf")


def test_arrival_window_rates_recent_tokens_only():
    from moe_runtime.routing import ArrivalWindow

    w = ArrivalWindow(keep_s=100.0)
    w.add("r", 0.0, 1000)
    w.add("r", 50.0, 500)
    w.add("r", 59.0, 100)
    assert w.rate("r", 60.0, 20.0) == pytest.approx(600 / 20)
    assert w.rate("r", 60.0, 100.0) == pytest.approx(1600 / 100)
    w.add("r", 200.0, 1)  # the others are older than keep_s: dropped; a window is capped at keep_s
    assert w.rate("r", 200.0, 1000.0) == pytest.approx(1 / 100)
    w.forget("r")
    assert w.rate("r", 200.0, 10.0) == 0.0


def test_arrival_window_costs_log_n_and_stays_bounded():
    """A client's huge max_tokens (a long window) must not make each routing decision scan every entry."""
    from moe_runtime.routing import ArrivalWindow

    w = ArrivalWindow(keep_s=600.0)
    for k in range(200_000):
        w.add("r", k * 0.01, 10)
    times, cums, start = w._sent["r"]
    assert len(times) - start[0] <= 60_001 and len(times) < 130_000   # only the last 600 s are kept
    assert w.rate("r", 2000.0, 1e12) == pytest.approx(10 / 0.01, rel=1e-3)


def test_a_free_pool_still_prefers_the_replica_holding_the_prefix():
    reps = [_rep("a", dpw=0.0), _rep("b", dpw=0.0)]
    assert rank(reps, {"b": 10}, prompt_tokens=800, output_tokens=10, block_tokens=64)[0].id == "b"


def test_the_index_never_grows_past_its_cap():
    from moe_runtime import routing

    idx = PrefixIndex(blocks_per_replica=10**12)
    assert idx.capacity == routing.MAX_INDEX_BLOCKS


def test_routing_config_refuses_prices_and_rates_that_would_break_the_order():
    from moe_runtime.config import RoutingConfig

    for field in ("dollars_per_work", "prefill_tps", "decode_tps"):
        for bad in (-1.0, float("nan"), float("inf")):
            with pytest.raises(ValueError, match=f"routing.{field}"):
                RoutingConfig.model_validate({field: {"a": bad}})
    assert RoutingConfig.model_validate({"dollars_per_work": {"a": 0.0}}).dollars_per_work == {"a": 0.0}


def test_tpot_slack_is_the_prefill_a_decode_can_absorb():
    """(out - 1) x (target - step): 13 tokens at a 20 ms step against 100 ms carry 0.96 s of others' prefill."""
    from moe_runtime.routing import tpot_slack_s

    assert tpot_slack_s(13, 0.02, 0.1) == pytest.approx(0.96)
    assert tpot_slack_s(1, 0.02, 0.1) is None       # one token has no TPOT
    assert tpot_slack_s(50, 0.02, None) is None     # no target: nothing to protect
    assert tpot_slack_s(50, 0.2, 0.1) is None       # the step alone misses: lost whatever lands beside it
    assert tpot_slack_s(50, 0.1, 0.1) is None


def test_the_ledger_counts_the_requests_a_prefill_would_break():
    """Prefill routed after a request stretches it; prefill routed before it does not; a finished request is
    out of reach; a request already past its threshold is not counted again."""
    from moe_runtime.routing import InterferenceLedger

    led = InterferenceLedger()
    led.add("r", "short", 0.5, 0.3)      # its own 0.5 s prefill stretches nobody: it was alone
    assert led.breaks("r", 0.2) == 0
    assert led.breaks("r", 0.31) == 1
    assert led.breaks("other", 5.0) == 0
    led.add("r", "long", 0.2, 10.0)      # 0.2 s behind "short": 0.1 s of its slack is left
    assert led.breaks("r", 0.11) == 1 and led.breaks("r", 0.09) == 0
    assert led.breaks("r", 10.5) == 2
    led.add("r", "big", 1.0, None)       # breaks "short" (nothing protects it now), "long" keeps 9 s
    assert led.breaks("r", 0.5) == 0 and led.breaks("r", 9.5) == 1
    led.finish("long")
    assert led.breaks("r", 100.0) == 0 and len(led) == 1   # "short" stays in flight, already lost
    led.finish("short")
    led.finish("never-added")
    assert len(led) == 0
    led.add("r", "x", 0.0, 1.0)
    led.forget("r")
    assert led.breaks("r", 5.0) == 0 and len(led) == 0


def test_a_prefill_that_would_break_a_short_answer_goes_elsewhere_even_if_dearer():
    """The cheap replica is decoding a short answer with 0.2 s of slack; a 4000-token prompt (0.5 s of prefill
    there) would push it past its TPOT target, so the request goes to the dear replica; a short prompt fits."""
    cheap = Replica(**{**_rep("c1", "cheap", load=1).__dict__, "prefill_tps": 8000.0, "breaks": 1})
    dear = Replica(**{**_rep("d1", "dear", dpw=DEAR).__dict__, "prefill_tps": 8000.0})
    args = dict(prompt_tokens=4000, output_tokens=10, block_tokens=64, ttft_target_s=10.0, tpot_target_s=0.1)
    assert [r.id for r in rank([cheap, dear], {}, **args)] == ["d1", "c1"]
    fits = Replica(**{**cheap.__dict__, "breaks": 0})
    assert rank([fits, dear], {}, **args)[0].id == "c1"
    # no replica without a break: the one that breaks the fewest, among those that keep the TTFT target
    worse = Replica(**{**dear.__dict__, "breaks": 3})
    assert rank([worse, cheap], {}, **args)[0].id == "c1"
    late = Replica(**{**cheap.__dict__, "pending_prefill": 200_000.0})
    assert rank([worse, late], {}, **args)[0].id == "d1"   # a TTFT miss is worse than TPOT breaks
    # a full batch means waiting for a slot, which the TTFT prediction does not see: worse than one break
    packed = Replica(**{**dear.__dict__, "load": 60, "limit": 100})
    assert rank([packed, cheap], {}, **args)[0].id == "c1"


def test_prefill_rate_is_what_the_decode_batch_leaves_with_chunked_prefill():
    """Each chunked step carries c s of prompt beside a step_s decode: prefill gets c / (step_s + c) of the
    engine. Whole-prompt prefill (chunk 0) and an idle replica prefill at the full rate."""
    from moe_runtime.routing import prefill_rate

    assert prefill_rate(8000.0, 0.03, 2048) == pytest.approx(8000.0 * 0.256 / (0.03 + 0.256))
    assert prefill_rate(8000.0, 0.0, 2048) == 8000.0
    assert prefill_rate(8000.0, 0.03, 0) == 8000.0
    assert prefill_rate(float("inf"), 0.03, 2048) == float("inf")
