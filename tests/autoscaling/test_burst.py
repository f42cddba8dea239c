"""The burst reserve (autoscaling/burst.py): bursts shorter than an interval keep capacity through short gaps."""
import pytest

from helpers import obs, settings, two_pools
from moe_operator.autoscaling import decide
from moe_operator.autoscaling.burst import RESERVE_COLD_STARTS, burst_reserve, burst_sample, reserve_window_s
from moe_operator.autoscaling.mix import capacity_of
from moe_operator.autoscaling.model import Settings


def test_sample_is_the_capacity_that_would_meet_the_ttft_target():
    # FIFO wait scales as 1/capacity: 3000 w/s with a 6 s p95 wait needs 9000 w/s for 2 s
    assert burst_sample(3000, 6.0, 2.0) == pytest.approx(9000)
    # only the queueing part shrinks with capacity: 0.4 s of own prefill stays
    assert burst_sample(3000, 6.4, 2.4, prefill_s=0.4) == pytest.approx(9000)
    assert burst_sample(3000, 0.3, 2.0, prefill_s=0.4) == 0.0        # no queueing at all
    assert burst_sample(3000, None, 2.0) is None and burst_sample(3000, 5.0, None) is None
    assert burst_sample(0, 5.0, 2.0) is None


def test_reserve_is_a_quantile_of_the_window_and_forgets_old_bursts():
    samples = [(0.0, 9000.0), (100.0, 1000.0), (200.0, 2000.0), (300.0, 3000.0), (400.0, 4000.0)]
    assert burst_reserve(samples, 400.0, 600.0, 1.0) == 9000.0
    assert burst_reserve(samples, 400.0, 350.0, 1.0) == 4000.0        # the 9000 burst left the window
    assert burst_reserve(samples, 400.0, 600.0, 0.5) == 3000.0
    assert burst_reserve(samples, 2000.0, 600.0, 1.0) == 0.0
    assert burst_reserve(samples, 400.0, 0.0, 1.0) == 0.0


def test_window_defaults_to_cold_starts_and_can_be_set_or_turned_off():
    pools = two_pools()   # cold starts 180 s and 120 s
    assert reserve_window_s(pools, Settings()) == RESERVE_COLD_STARTS * 180
    short = two_pools(ascend={"cold_start_s": 10}, h800={"cold_start_s": 10})
    assert reserve_window_s(short, Settings(scale_down_stabilization_s=300)) == 300   # never shorter than the down window
    assert reserve_window_s(pools, Settings(burst_reserve_s=90)) == 90
    assert reserve_window_s(pools, Settings(burst_reserve_s=0)) == 0
    with pytest.raises(ValueError):
        Settings(burst_reserve_s=-1)
    with pytest.raises(ValueError):
        Settings(burst_quantile=0)


def _burst_then_quiet(s, quiet_until=600, step=30):
    """One interval whose TTFT p95 is 4x the target on 1500 w/s, then quiet intervals at 300 w/s."""
    pools = two_pools()
    d = decide(obs(0, 300, ready={"h800": 1}), pools, s, None, 0)
    d = decide(obs(30, 1200, ready=d.replicas, ttft=8.0), pools, s, d.history, 30)
    out = [d]
    for t in range(60, quiet_until + 1, step):
        d = decide(obs(t, 300, ready=d.replicas, ttft=0.2 if t % 60 else None), pools, s, d.history, t)
        out.append((t, d))
    return pools, out


def test_reserve_holds_through_gaps_shorter_than_the_window_then_decays():
    s = settings(ttft_p95_s=2.0, burst_reserve_s=300)
    pools, out = _burst_then_quiet(s)
    burst = out[0]
    assert capacity_of(pools, burst.replicas) >= 1500 * 8.0 / 2.0      # sized for the burst, not the 1200 w/s mean
    assert any("burst reserve" in r for r in burst.reasons)
    held = [d for t, d in out[1:] if t <= 30 + 300]
    assert held and all(capacity_of(pools, d.replicas) >= 6000 for d in held)   # kept through the quiet gap
    t_last, last = out[-1]
    assert t_last > 30 + 300 and last.replicas == {"ascend": 0, "h800": 1}   # bursts stopped: back to demand


def test_reserve_off_follows_the_interval_mean():
    pools, out = _burst_then_quiet(settings(ttft_p95_s=2.0, burst_reserve_s=0, slo_boost_step=0.0))
    assert capacity_of(pools, out[0].replicas) < 3000
    assert all(d.replicas == {"ascend": 0, "h800": 1} for _, d in out[1:])


def test_reserve_never_breaks_the_hourly_budget():
    s = settings(ttft_p95_s=2.0, burst_reserve_s=600, max_hourly_cost=45.0)
    pools, out = _burst_then_quiet(s)
    assert all(d.cost_per_hour <= 45.0 + 1e-9 for _, d in out[1:]) and out[0].cost_per_hour <= 45.0
    assert any(c.type == "BudgetLimited" and c.status == "True" for c in out[0].conditions)


def test_reserve_does_not_block_scale_to_zero():
    s = settings(ttft_p95_s=2.0, burst_reserve_s=3600, scale_to_zero=True, idle_s=60)
    pools = two_pools()
    d = decide(obs(0, 1200, ready={"h800": 1}, ttft=8.0), pools, s, None, 0)
    assert capacity_of(pools, d.replicas) >= 6000
    for t in range(30, 601, 30):
        d = decide(obs(t, 0, ready=d.replicas, rps=0.0), pools, s, d.history, t)
    assert sum(d.replicas.values()) == 0    # idle 60 s + the 180 s cold start passed: zero despite the reserve


def test_reserve_takes_the_same_headroom_as_the_mean_need():
    pools = two_pools()
    caps = []
    for util in (1.0, 0.5):
        s = settings(ttft_p95_s=2.0, burst_reserve_s=600, target_utilization=util, slo_boost_step=0.0)
        d = decide(obs(0, 300, ready={"h800": 1}), pools, s, None, 0)
        d = decide(obs(30, 300, ready=d.replicas, ttft=8.0), pools, s, d.history, 30)   # sample 1500 x 4 = 6000
        caps.append(capacity_of(pools, d.replicas))
    assert 6000 <= caps[0] < 7500 and caps[1] >= 12000
