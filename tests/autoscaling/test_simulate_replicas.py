"""The per-replica serving model (simulate/replicas.py): batching, KV, chunked prefill, routing, drain, cost."""
import numpy as np
import pytest

from moe_operator.autoscaling import PoolModel, Settings, WorkWeights
from moe_operator.autoscaling.simulate import run as runmod
from moe_operator.autoscaling.simulate.policies import StaticPeak
from moe_operator.autoscaling.simulate.replicas import ReplicaReplay, least_loaded, profiles_for
from moe_operator.autoscaling.simulate.serving import ServingProfile
from moe_operator.autoscaling.simulate.traces import Trace

W = WorkWeights(prompt=0.1, cached_prompt=0.01)
PROF = ServingProfile(max_batch=4, kv_tokens=100_000, prefill_tps=1000.0, cached_prefill_tps=10_000.0,
                      step_base_s=0.01, step_per_seq_s=0.005, prefill_chunk_tokens=100)


def pool(name="gpu", price=3.6, cold=60.0, capacity=100.0, max_replicas=8):
    return PoolModel(name, price_per_hour=price, capacity=capacity, min_replicas=0, max_replicas=max_replicas,
                     cold_start_s=cold, prefill_tps=1000.0)


def trace(arrival, prompt, output, cached=None):
    n = len(arrival)
    cached = np.zeros(n) if cached is None else np.asarray(cached, float)
    return Trace("t", np.asarray(arrival, float), np.asarray(prompt, float) * np.ones(n), cached,
                 np.asarray(output, float) * np.ones(n))


def replay(tr, replicas=1, prof=PROF, pools=None, cold_start=False, **kw):
    pools = pools or [pool()]
    r = ReplicaReplay(tr, pools, W, 10.0, 0.1, cold_start=cold_start,
                      profiles={p.name: prof for p in pools}, **kw)
    r.apply({pools[0].name: replicas} if isinstance(replicas, int) else replicas, 0.0)
    return r


def run(r, seconds, start=0):
    for t in range(start, start + seconds):
        r.step(float(t))


def test_single_request_on_an_idle_replica_gets_its_prefill_as_ttft_and_one_step_per_token():
    """TTFT = computed/prefill_tps + cached/cached_prefill_tps from its arrival; TPOT = step_s(1)."""
    r = replay(trace([0.25], 500, 11, cached=[2000]))
    run(r, 5)
    assert r.ttft[0] == pytest.approx(500 / 1000 + 2000 / 10_000)
    assert r.tpot[0] == pytest.approx(PROF.step_s(1))
    assert r.done


def test_tpot_grows_with_the_batch_as_step_s():
    """b sequences decoding together each get a token every step_s(b) seconds."""
    for b in (1, 4):
        r = replay(trace([0.0] * b, 0, 50))
        run(r, 5)
        assert r.tpot == pytest.approx(np.full(b, PROF.step_s(b)))
    assert PROF.step_s(4) > PROF.step_s(1)


def test_a_full_batch_makes_the_next_request_wait_for_a_slot():
    """max_batch + 1 simultaneous requests: the last is admitted only when the first finishes."""
    r = replay(trace([0.0] * 5, 0, 20))
    run(r, 5)
    decode = 19 * PROF.step_s(4)                       # four decode together; the fifth waits
    assert r.ttft[:4] == pytest.approx(np.zeros(4))
    assert r.ttft[4] == pytest.approx(decode)
    assert r.tpot[4] == pytest.approx(PROF.step_s(1))


def test_the_kv_budget_blocks_admission_even_with_free_slots():
    """Admission reserves prompt + output tokens of KV; a second request that does not fit waits."""
    prof = ServingProfile(4, 1500, 1000.0, 10_000.0, 0.01, 0.005, 100)
    r = replay(trace([0.0, 0.0], 500, 300), prof=prof)     # 800 KV tokens each, 1500 in all
    run(r, 10)
    first_done = 0.5 + 299 * prof.step_s(1)
    assert r.ttft[1] == pytest.approx(first_done + 0.5)  # waits for the first, then its own prefill
    assert r.done


def test_a_request_larger_than_the_kv_budget_runs_alone_instead_of_being_lost():
    """A sequence that can never fit is admitted on an empty replica (documented) and finishes."""
    prof = ServingProfile(4, 100, 1000.0, 10_000.0, 0.01, 0.005, 100)
    r = replay(trace([0.0, 0.0], 500, 10), prof=prof)
    run(r, 5)
    assert r.done and r.ttft[1] > r.ttft[0] + 9 * prof.step_s(1)


def test_a_pending_prefill_slows_decode_as_chunked_prefill():
    """While a prompt prefills, each step carries a chunk: decode steps take step_s(b) + chunk / prefill_tps."""
    r = replay(trace([0.0, 0.0], [0, 5000], [50, 2]))      # 5 s of prefill while request 0 decodes
    run(r, 10)
    chunk = PROF.prefill_chunk_tokens / PROF.prefill_tps
    assert r.tpot[0] == pytest.approx(PROF.step_s(1) + chunk)
    prefill_share = chunk / (PROF.step_s(1) + chunk)
    decode_time = 49 * (PROF.step_s(1) + chunk)           # request 0's decode, prefill got prefill_share of it
    assert r.ttft[1] == pytest.approx(decode_time + (5.0 - decode_time * prefill_share))


def test_prefill_is_first_come_first_served_per_replica():
    """Two prompts on one replica: the second's first token comes after both prefills."""
    r = replay(trace([0.0, 0.1], 1000, 1))
    run(r, 5)
    assert r.ttft == pytest.approx([1.0, 2.0 - 0.1])


def test_least_loaded_routing_spreads_requests_and_breaks_ties_to_the_lowest_index():
    """Four long requests on four replicas: one each; one request on idle replicas goes to the first."""
    r = replay(trace([0.0] * 4, 100, 500), replicas=4)
    run(r, 1)
    assert [x.nrun for x in r.fleet.active] == [1, 1, 1, 1]
    r = replay(trace([0.0], 100, 500), replicas=3)
    run(r, 1)
    assert [x.nrun for x in r.fleet.active] == [1, 0, 0]
    assert least_loaded(r.fleet.active, 0) == 1
    r = replay(trace([0.0] * 7, 100, 500), replicas=3)
    run(r, 1)
    assert [x.load for x in r.fleet.active] == [3, 2, 2]   # round robin at equal loads, from the first


def test_a_custom_router_is_used():
    """The router is pluggable: always-last sends everything to the newest replica."""
    r = replay(trace([0.0] * 3, 100, 500), replicas=3, router=lambda reps, i: len(reps) - 1)
    run(r, 1)
    assert [x.nrun for x in r.fleet.active] == [0, 0, 3]


def test_scale_down_drains_running_requests_and_reroutes_queued_ones():
    """A removed replica takes no new requests, its queue moves, its running requests finish, it is paid until
    then; no request is lost."""
    prof = ServingProfile(1, 100_000, 1000.0, 10_000.0, 0.01, 0.005, 100)
    r = replay(trace([0.0] * 4, 0, 201), replicas=2, prof=prof)   # each decode: 200 x 0.015 = 3 s
    run(r, 1)
    assert [x.load for x in r.fleet.active] == [2, 2]
    r.apply({"gpu": 1}, 1.0)
    assert len(r.fleet.active) == 1 and len(r.fleet.draining) == 1 and r.fleet.active[0].load == 3
    run(r, 20, start=1)
    assert r.done and np.isfinite(r.tpot).all()
    # paid: 2 replicas for [0, 1), then 1 asked + the drained one until its request ends at 3 s
    assert r.cost == pytest.approx(3.6 * (2 * 1 + 1 * 20 + 2.0) / 3600)


def test_cold_start_delays_serving_but_not_paying():
    """A replica asked for at t=0 with a 60 s cold start serves from t=60; it is paid from t=0."""
    r = replay(trace([1.0], 100, 2), cold_start=True)
    run(r, 59)
    assert not np.isfinite(r.ttft[0]) and r.observation(59.0, 59.0).queue_depth == 1
    run(r, 5, start=59)
    assert r.ttft[0] == pytest.approx(60.0 - 1.0 + 0.1)
    assert r.cost == pytest.approx(3.6 * 64 / 3600)


def test_cost_is_replicas_asked_times_price_times_time():
    """Starting replicas are paid; cancelled ones stop at once; pools are priced separately."""
    pools = [pool("a", price=3.6, cold=30.0), pool("b", price=7.2, cold=30.0)]
    r = replay(trace([500.0], 1, 1), replicas={"a": 2, "b": 1}, pools=pools, cold_start=True)
    run(r, 10)
    r.apply({"a": 1, "b": 1}, 10.0)
    run(r, 10, start=10)
    assert r.cost == pytest.approx((2 * 3.6 + 7.2) * 10 / 3600 + (3.6 + 7.2) * 10 / 3600)
    assert r.series[-1][3] == {"a": 1, "b": 1} and r.series[-1][4] == pytest.approx(3.6 + 7.2)
    assert r.actions == 1


def test_conservation_every_request_finishes_once_and_served_work_equals_the_trace():
    """With ample capacity, every request gets one TTFT and one TPOT and the series serves all the work."""
    rng = np.random.default_rng(3)
    n = 400
    tr = trace(np.sort(rng.uniform(0, 100, n)), rng.integers(10, 800, n), rng.integers(1, 60, n),
               cached=rng.integers(0, 300, n))
    r = replay(tr, replicas=4)
    t = 0
    while not r.done and t < 400:
        r.step(float(t))
        t += 1
    assert r.finished == n and np.isfinite(r.ttft).all() and np.isfinite(r.tpot).all()
    assert sum(s[5] for s in r.series) == pytest.approx(r.work.sum())
    assert r.unmet_tokens() == 0 and r.ongoing() == 0


def test_observation_reports_what_the_runtime_would():
    """Tokens by kind and by pool, started requests, queue, running, p95s and ready replicas per pool."""
    r = replay(trace([0.0] * 6, 1000, 400), replicas=1)
    run(r, 3)
    o = r.observation(3.0, 3.0)
    assert o.ready == {"gpu": 1} and o.requests_per_s == pytest.approx(4 / 3)   # 4 admitted (max_batch)
    assert o.queue_depth == 2 and o.running == 4
    # prefills end at 1 s, then 1 + 1.15 s (the second shares its steps with the first's decode): two in 3 s
    assert o.tokens_per_s["prompt"] == pytest.approx(2000 / 3)
    assert o.served_by_pool["gpu"]["generated"] == pytest.approx(o.tokens_per_s["generated"])
    assert o.ttft_p95_s is not None and o.tpot_p95_s is None                    # nothing finished yet


def test_profiles_for_matches_the_pool_models():
    """Full-batch decode = the pool's capacity (so TPOT at capacity is the fluid model's), cached from weights."""
    pools = [pool("a", capacity=1500.0), PoolModel("b", 1.0, capacity=1000.0, tpot_at_capacity_s=32 / 1000.0)]
    prof = profiles_for(pools, 32, weights=WorkWeights(prompt=0.125, cached_prompt=0.01), max_context_tokens=4096)
    assert prof["a"].decode_tps(32) == pytest.approx(1500.0)
    assert prof["b"].step_s(32) == pytest.approx(pools[1].tpot_at_capacity_s)
    assert prof["a"].prefill_tps == 1000.0 and prof["b"].prefill_tps == pytest.approx(1000.0 / 0.125)
    assert prof["a"].cached_prefill_tps == pytest.approx(150_000.0)
    assert prof["a"].kv_tokens == 32 * 4096
    assert profiles_for(pools, 8, kv_tokens_per_replica=1000)["a"].kv_tokens == 1000


def test_run_replay_drives_it_like_the_fluid_model(monkeypatch):
    """run.replay works unchanged with ReplicaReplay in place of fleet.Replay (the interface is the same)."""
    pools = [pool("a", capacity=1500.0, cold=60.0), pool("b", price=2.0, capacity=1000.0, cold=90.0)]
    prof = profiles_for(pools, 16, weights=W)
    monkeypatch.setattr(runmod, "Replay", lambda *a, **k: ReplicaReplay(*a, profiles=prof, **k))
    rng = np.random.default_rng(1)
    tr = trace(np.sort(rng.uniform(0, 600, 1200)), 300, 40)
    s = Settings(interval_s=30.0, ttft_p95_s=5.0, tpot_p95_s=0.2, weights=W)
    for policy in (runmod.make_policy(name, tr, pools, s, 16) for name in ("ours", "hpa", "ray-serve")):
        res = runmod.replay(tr, pools, s, policy)
        assert res.unmet_tokens == 0 and res.slo_attainment > 0.5 and res.total_cost > 0
        assert res.served_tokens == pytest.approx(tr.total_tokens, rel=1e-6)
    static = runmod.replay(tr, pools, s, StaticPeak(pools, s, 5000.0))
    assert static.scale_actions == 0 and static.slo_attainment > 0.9


def test_the_overhead_outside_the_engine_adds_to_every_ttft_and_nothing_else():
    """A calibrated ttft_overhead_s (HTTP, proxy, routing) is latency, not engine time: the same requests get the
    same TPOT and finish order, each TTFT exactly that much later, and the attainable check counts it."""
    from dataclasses import replace as dc_replace

    from moe_operator.autoscaling.simulate.metrics import attainable_replica
    tr = trace([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], 300, 20)
    plain, slow = replay(tr), replay(tr, prof=dc_replace(PROF, ttft_overhead_s=0.25))
    run(plain, 10)
    run(slow, 10)
    assert slow.ttft == pytest.approx(plain.ttft + 0.25)
    assert slow.tpot == pytest.approx(plain.tpot)
    # the runtime's own TTFT metric (what the policy reads) starts at the handler: it does not see the overhead
    assert slow.observation(10.0, 10.0).ttft_p95_s == pytest.approx(plain.observation(10.0, 10.0).ttft_p95_s)
    lone = PROF.prefill_s(300)                     # 0.3 s alone: attainable at a 0.4 s target without the overhead
    args = (np.array([300.0]), np.zeros(1), np.array([20.0]), [pool()])
    assert attainable_replica(*args, {"gpu": PROF}, lone + 0.1, None)[0]
    assert not attainable_replica(*args, {"gpu": dc_replace(PROF, ttft_overhead_s=0.25)}, lone + 0.1, None)[0]
    with pytest.raises(ValueError, match="ttft_overhead_s"):
        dc_replace(PROF, ttft_overhead_s=-0.1)


def test_queue_wait_is_the_time_before_a_request_s_own_prefill_began():
    """The wait the runtime reports (vLLM's queue time): 0 for a request that finds the replica free, and the
    prefill ahead of it for one that arrives behind another; TTFT is that wait plus its own prefill."""
    r = replay(trace([0.0, 0.0], 1000, 2))          # two 1 s prefills at once on one replica: FCFS
    run(r, 5)
    o = r.observation(5.0, 5.0)
    assert r.ttft[1] == pytest.approx(2.0, rel=0.05)
    assert o.queue_wait_p95_s == pytest.approx(np.percentile([0.0, r.ttft[0]], 95), rel=0.05)
    idle = replay(trace([0.0, 3.0], 1000, 2))
    run(idle, 6)
    assert idle.observation(6.0, 6.0).queue_wait_p95_s == pytest.approx(0.0, abs=1e-9)
    assert idle.observation(7.0, 1.0).queue_wait_p95_s is None      # nothing began in the window
