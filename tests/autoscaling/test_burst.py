"""The latency reserve (autoscaling/burst.py): capacity for the part of latency that capacity shortens, kept for
bursts shorter than an interval, and taken back when a scale-up made for latency did not shorten it."""
import math

import pytest

from helpers import obs, settings, two_pools
from moe_operator.autoscaling import Observation, decide
from moe_operator.autoscaling.burst import (RESERVE_COLD_STARTS, judge, own_prefill_p95_s, prefill_rate, queue_work,
                                            recurring, reserve_capacity, reserve_window_s)
from moe_operator.autoscaling.mix import capacity_of
from moe_operator.autoscaling.model import PoolModel, Settings


# ---- the model's arithmetic ---------------------------------------------------------------------------------------
def test_queued_work_is_the_latency_capacity_shortens_times_capacity():
    # 6 s of TTFT of which 0.4 s is own prefill and 1.6 s the wait a carried backlog caused: 4 s x 3000 w/s queued
    assert queue_work(6.0, 0.4, 1.6, 3000) == pytest.approx(12000)
    assert queue_work(0.3, 0.4, 0.0, 3000) == 0.0          # below the floor: nothing queued
    assert queue_work(None, 0.4, 0.0, 3000) is None and queue_work(5.0, 0.0, 0.0, 0) is None
    # the capacity at which that work drains within the room the floor leaves: 12000 / (2.4 - 0.4)
    assert reserve_capacity([12000, 3000], 2.4, 0.4) == pytest.approx(6000)
    assert reserve_capacity([12000], 2.0, 2.0) == 0.0       # the floor uses the whole target: capacity cannot help
    assert reserve_capacity([], 2.0, 0.0) == 0.0 and reserve_capacity([5.0], None, 0.0) == 0.0


def test_own_prefill_p95_is_ln20_times_the_mean_at_the_fleets_prefill_rate():
    pools = [PoolModel("a", 1.0, 1000.0, prefill_tps=8000.0), PoolModel("b", 1.0, 1000.0, prefill_tps=24000.0)]
    # equal capacity on both pools: harmonic mean of 8000 and 24000 = 12000 tokens/s
    assert prefill_rate(pools, {"a": 1, "b": 1}, {}) == pytest.approx(12000)
    assert prefill_rate(pools, {"a": 2, "b": 0}, {}) == pytest.approx(8000)
    assert prefill_rate(pools, {}, {}) == 0.0
    assert own_prefill_p95_s(6000, 12000) == pytest.approx(math.log(20) * 0.5)
    assert own_prefill_p95_s(6000, 0.0) == 0.0


def test_the_reserve_level_is_one_seen_at_least_twice():
    assert recurring([9000.0, 1000.0, 4000.0, 2000.0]) == [4000.0]    # one 9000 interval is not a pattern
    assert recurring([9000.0, 9000.0, 1000.0]) == [9000.0]
    assert recurring([9000.0]) == [] and recurring([]) == []


def test_judge_picks_the_nearer_hypothesis_and_fits_the_floor():
    # capacity doubled: queueing predicts K unchanged (1000), an unfixable excess predicts K doubled (2000)
    assert judge(1000, 1000, 1100, 2000) is None                       # nearer 1000: the model held
    floor = judge(1000, 1000, 1900, 2000)                               # nearer 2000: not queueing
    assert floor == pytest.approx((1900 - 1000) / (2000 - 1000))       # seconds of latency capacity did not shorten
    assert judge(1000, 1000, 5000, 1000) is None                        # no more capacity: nothing to learn


def test_window_defaults_to_cold_starts_and_can_be_set_or_turned_off():
    pools = two_pools()   # cold starts 180 s and 120 s
    assert reserve_window_s(pools, Settings()) == RESERVE_COLD_STARTS * 180
    short = two_pools(ascend={"cold_start_s": 10}, h800={"cold_start_s": 10})
    assert (
        reserve_window_s(short, Settings(scale_down_stabilization_s=300)) == 300
    )  # never shorter than the down window
    assert reserve_window_s(pools, Settings(burst_reserve_s=90)) == 90
    assert reserve_window_s(pools, Settings(burst_reserve_s=0)) == 0
    with pytest.raises(ValueError):
        Settings(burst_reserve_s=-1)


# ---- the reserve inside decide ------------------------------------------------------------------------------------
def _burst_then_quiet(s, quiet_until=600, step=30):
    """Two intervals whose TTFT p95 is 4x the target on 1500 w/s (no prompt: no own prefill; a burst that came back),
    then quiet intervals at 300 w/s."""
    pools = two_pools()
    d = decide(obs(0, 300, ready={"h800": 1}), pools, s, None, 0)
    first = decide(obs(30, 1200, ready=d.replicas, ttft=8.0), pools, s, d.history, 30)
    d = decide(obs(60, 1200, ready={"h800": 1}, ttft=8.0), pools, s, first.history, 60)
    out = [d]
    for t in range(90, quiet_until + 1, step):
        d = decide(obs(t, 300, ready=d.replicas, ttft=0.2 if t % 60 else None), pools, s, d.history, t)
        out.append((t, d))
    return pools, first, out


def test_reserve_sizes_for_a_recurring_burst_holds_through_gaps_shorter_than_the_window_then_decays():
    s = settings(ttft_p95_s=2.0, burst_reserve_s=300)
    pools, first, out = _burst_then_quiet(s)
    assert capacity_of(pools, first.replicas) < 3000                     # seen once: not yet a pattern
    burst = out[0]
    assert capacity_of(pools, burst.replicas) >= 1500 * 8.0 / 2.0      # 12000 work units queued / 2 s
    assert any("latency reserve" in r for r in burst.reasons)
    held = [d for t, d in out[1:] if t <= 30 + 300]
    assert held and all(capacity_of(pools, d.replicas) >= 6000 for d in held)   # kept through the quiet gap
    t_last, last = out[-1]
    assert t_last > 60 + 300 and last.replicas == {"ascend": 0, "h800": 1}   # bursts stopped: back to demand


def test_reserve_off_follows_the_interval_mean():
    pools, _, out = _burst_then_quiet(settings(ttft_p95_s=2.0, burst_reserve_s=0))
    assert capacity_of(pools, out[0].replicas) < 3000
    assert all(d.replicas == {"ascend": 0, "h800": 1} for _, d in out[1:])


def test_reserve_is_not_divided_by_target_utilization_again():
    """The reserve is already the capacity that meets the target: headroom on top would pay twice."""
    pools = two_pools()
    caps = []
    for util in (1.0, 0.5):
        s = settings(ttft_p95_s=2.0, burst_reserve_s=600, target_utilization=util)
        d = decide(obs(0, 300, ready={"h800": 1}), pools, s, None, 0)
        for t in (30, 60):   # K = 1500 x 8 twice: 6000 w/s
            d = decide(obs(t, 300, ready={"h800": 1}, ttft=8.0), pools, s, d.history, t)
        caps.append(capacity_of(pools, d.replicas))
    assert 6000 <= caps[0] < 7500 and 6000 <= caps[1] < 7500


def test_reserve_never_breaks_the_hourly_budget():
    s = settings(ttft_p95_s=2.0, burst_reserve_s=600, max_hourly_cost=45.0)
    pools, _, out = _burst_then_quiet(s)
    assert all(d.cost_per_hour <= 45.0 + 1e-9 for _, d in out[1:]) and out[0].cost_per_hour <= 45.0
    assert any(c.type == "BudgetLimited" and c.status == "True" for c in out[0].conditions)


def test_reserve_does_not_block_scale_to_zero():
    s = settings(ttft_p95_s=2.0, burst_reserve_s=3600, scale_to_zero=True, idle_s=60)
    pools = two_pools()
    d = decide(obs(0, 1200, ready={"h800": 1}), pools, s, None, 0)
    for t in (30, 60):
        d = decide(obs(t, 1200, ready={"h800": 1}, ttft=8.0), pools, s, d.history, t)
    assert capacity_of(pools, d.replicas) >= 6000
    for t in range(90, 661, 30):
        d = decide(obs(t, 0, ready=d.replicas, rps=0.0), pools, s, d.history, t)
    assert sum(d.replicas.values()) == 0    # idle 60 s + the 180 s cold start passed: zero despite the reserve


def test_own_prefill_is_not_queueing():
    """TTFT p95 above target by the requests' own prefill: no latency capacity (the model's estimate says so)."""
    pools = two_pools(ascend={"prefill_tps": 8000.0}, h800={"prefill_tps": 12000.0})
    s = settings(ttft_p95_s=2.0)
    # 10,000 computed prompt tokens per request at 12,000 tokens/s: p95 own prefill ~ ln 20 x 0.83 s = 2.5 s
    o = Observation(30, {"generated": 200.0, "prompt": 10000.0, "cached_prompt": 0.0}, requests_per_s=1.0,
                    queue_depth=0, ttft_p95_s=2.6, ready={"h800": 1})
    d = decide(o, pools, s, decide(obs(0, 2200, ready={"h800": 1}), pools, s, None, 0).history, 30)
    assert 2200 <= capacity_of(pools, d.replicas) < 3000      # 2200 w/s of demand (0.2 x 10,000 + 200), not the TTFT
    assert any("capacity cannot shorten it" in r for r in d.reasons)


# ---- closed loops: a fluid fleet around decide ----------------------------------------------------------------------
def closed_loop(pools, s, demand, seconds, start, floor_s=0.0, work_per_request=500.0, burst_work=0.0):
    """Replay ``decide`` against a fluid fleet, one interval at a time. ``demand(t)`` work units/s arrive evenly;
    the ready replicas serve a FIFO queue; a replica asked for serves ``cold_start_s`` later. TTFT p95 of an
    interval = ``floor_s`` (the requests' own latency, which no capacity shortens) + the wait at the end of the
    interval (backlog / capacity) + a sub-interval burst of ``burst_work`` work units queued at the capacity.
    Observations carry generated tokens only (no prompt: the policy's own prefill estimate is 0, so a floor is
    something it must learn). Returns [(t, decision, ready capacity, TTFT p95)]."""
    iv = s.interval_s
    starts = {p.name: [0.0] * start.get(p.name, 0) for p in pools}   # ready times of the replicas asked for
    history, backlog, out = None, 0.0, []
    for k in range(1, int(seconds // iv) + 1):
        t = k * iv
        ready = {p.name: sum(1 for r in starts[p.name] if r <= t - iv) for p in pools}
        cap = capacity_of(pools, ready)
        arrived = demand(t) * iv
        served = min(arrived + backlog, cap * iv)
        backlog = arrived + backlog - served
        ttft = floor_s + (backlog / cap if cap > 0 else 60.0) + (burst_work / cap if cap > 0 else 0.0)
        o = Observation(t, {"generated": served / iv, "prompt": 0.0, "cached_prompt": 0.0},
                        requests_per_s=served / iv / work_per_request, queue_depth=backlog / work_per_request,
                        ttft_p95_s=ttft, ready=ready)
        d = decide(o, pools, s, history, t)
        history = d.history
        for p in pools:
            have, want = len(starts[p.name]), d.replicas[p.name]
            if want > have:
                starts[p.name] += [t + p.cold_start_s] * (want - have)
            elif want < have:
                starts[p.name] = sorted(starts[p.name])[:want]       # the newest (still starting) go first
        out.append((t, d, cap, ttft))
    return out


def test_a_start_up_backlog_drains_and_is_not_remembered_as_a_burst():
    """Issue 11, failure 2: a fleet that starts at a quarter of flat demand must not climb to both pools' maximum
    and hold it: the backlog it builds is an under-provisioning transient, not a burst."""
    pools = two_pools()
    s = settings(ttft_p95_s=2.0, target_utilization=0.8, scale_down_stabilization_s=300.0, hysteresis=0.15)
    flat = 6000.0
    out = closed_loop(pools, s, lambda t: flat, 1800, start={"h800": 1})
    widest = capacity_of(pools, {"ascend": 10, "h800": 10})
    peak = max(capacity_of(pools, d.replicas) for _, d, _, _ in out)
    assert peak < 0.6 * widest, peak
    settled = [capacity_of(pools, d.replicas) for t, d, _, _ in out if t >= 900]
    assert all(flat / 0.8 <= c <= flat / 0.8 * 1.15 + 1500 for c in settled), settled   # demand / util, one band
    assert out[-1][3] <= s.ttft_p95_s                                                    # the backlog is gone


def test_latency_that_capacity_does_not_shorten_is_not_chased():
    """Issue 11, failure 1: TTFT p95 above the target by latency no replica shortens (2.5 s of the requests' own
    prefill that the policy's estimate misses). One scale-up may try; the check after its cold start finds the
    excess did not fall with capacity, and the added capacity goes back. The fleet never runs to maxReplicas."""
    pools = two_pools()
    s = settings(ttft_p95_s=2.0, target_utilization=0.8, scale_down_stabilization_s=300.0, hysteresis=0.15)
    out = closed_loop(pools, s, lambda t: 3000.0, 3600, start={"h800": 3}, floor_s=2.5, burst_work=1500.0)
    widest = capacity_of(pools, {"ascend": 10, "h800": 10})
    caps = [capacity_of(pools, d.replicas) for _, d, _, _ in out]
    assert max(caps) < 0.5 * widest, max(caps)
    assert any("latency check" in r for _, d, _, _ in out for r in d.reasons)
    late = [c for (t, _, _, _), c in zip(out, caps) if t >= 1800]
    assert max(late) <= 3000 / 0.8 * 1.15 + 1500, late      # back to what demand needs


def test_latency_that_capacity_does_shorten_is_met_and_kept():
    """The same loop with bursts and no hidden floor: the reserve meets the target and the check keeps it."""
    pools = two_pools()
    s = settings(ttft_p95_s=2.0, target_utilization=0.8, scale_down_stabilization_s=300.0, hysteresis=0.15)
    out = closed_loop(pools, s, lambda t: 3000.0, 1800, start={"h800": 3}, burst_work=12000.0)
    late = [(d, ttft) for t, d, _, ttft in out if t >= 600]
    assert all(ttft <= 2.0 + 1e-6 for _, ttft in late), [x for _, x in late]
    assert all(capacity_of(pools, d.replicas) >= 6000 for d, _ in late)         # 12000 work units / 2 s
    assert not any("latency check" in r for _, d, _, _ in out for r in d.reasons)


def test_a_rising_demand_is_met_a_cold_start_ahead():
    """Demand rising 2000 -> 6000 w/s over 30 minutes with 10-minute cold starts: capacity asked for when the need
    shows serves 10 minutes late. The significant trend of the mean need is read one cold start ahead, so the
    replicas arrive with the demand (7 of 60 intervals miss the TTFT target; without it 48 did, with a 60 s queue)."""
    pools = two_pools(ascend={"cold_start_s": 600}, h800={"cold_start_s": 600})
    s = settings(ttft_p95_s=2.0, target_utilization=0.8, scale_down_stabilization_s=300.0, hysteresis=0.15)
    out = closed_loop(pools, s, lambda t: 2000 + 4000 * min(t, 1800) / 1800, 2400, start={"h800": 2})
    late = [ttft for t, _, _, ttft in out if t > 600]      # after the first cold start (no policy could act sooner)
    assert sum(1 for x in late if x > s.ttft_p95_s) <= 10, late
    assert any("trend" in r for _, d, _, _ in out for r in d.reasons)
    # and a flat demand shows no trend
    flat = closed_loop(pools, s, lambda t: 4000.0, 1800, start={"h800": 4})
    assert not any("trend" in r for _, d, _, _ in flat for r in d.reasons)
