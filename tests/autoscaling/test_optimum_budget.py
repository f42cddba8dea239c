"""The references honour maxHourlyCost (simulate/optimum.py): never above it, most met demand first, then cost."""
import numpy as np
import pytest

from moe_operator.autoscaling import PoolModel, Settings, WorkWeights
from moe_operator.autoscaling.simulate.optimum import clairvoyant_cold_start, offline_optimum, widest_within
from moe_operator.autoscaling.simulate.run import simulate
from moe_operator.autoscaling.simulate.traces import Trace

SMALL = PoolModel("small", price_per_hour=1.0, capacity=100.0, min_replicas=0, max_replicas=10, cold_start_s=60)
BIG = PoolModel("big", price_per_hour=3.0, capacity=400.0, min_replicas=0, max_replicas=10, cold_start_s=60)


def flat(rate_work, seconds=300):
    """One arrival a second of ``rate_work`` work units."""
    arrival = np.arange(0.0, float(seconds))
    return arrival, np.full(len(arrival), float(rate_work))


def cost_rate(plan, pools):
    return [sum(step[p.name] * p.price_per_hour for p in pools) for step in plan]


def test_widest_within_the_budget():
    lower = np.zeros(2)
    assert widest_within([SMALL, BIG], 4.0, lower) == 500.0          # 1 big + 1 small beats 4 small (400)
    assert widest_within([SMALL, BIG], 0.5, lower) == 0.0
    assert widest_within([SMALL, BIG], 1e9, lower) == 10 * 100 + 10 * 400   # maxReplicas
    assert widest_within([SMALL, BIG], 4.0, np.array([5.0, 0.0])) == 0.0   # the minimums alone cost more


def test_budget_that_does_not_bind_changes_nothing():
    arrival, work = flat(350)
    free = offline_optimum([SMALL, BIG], arrival, work, 30.0, window_s=1.0, horizon_s=299.0)
    loose = offline_optimum([SMALL, BIG], arrival, work, 30.0, window_s=1.0, horizon_s=299.0, max_hourly_cost=100.0)
    assert loose.plan == free.plan and loose.cost == pytest.approx(free.cost) and loose.unmet_work == 0.0
    assert free.peak_hourly_cost == max(cost_rate(free.plan, [SMALL, BIG]))


def test_demand_above_the_budget_gets_the_widest_mix_not_the_cheapest():
    # 600 w/s; $4/h buys at most 500 w/s (1 big + 1 small); without the budget the cheapest cover is 2 big ($6/h)
    arrival, work = flat(600)
    free = offline_optimum([SMALL, BIG], arrival, work, 30.0, window_s=1.0, horizon_s=299.0)
    assert max(cost_rate(free.plan, [SMALL, BIG])) > 4.0
    opt = offline_optimum([SMALL, BIG], arrival, work, 30.0, window_s=1.0, horizon_s=299.0, max_hourly_cost=4.0)
    assert all(step == {"small": 1, "big": 1} for step in opt.plan)
    assert opt.peak_hourly_cost == pytest.approx(4.0)
    assert opt.unmet_work == pytest.approx(100.0 * 30.0 * len(opt.plan))    # 100 w/s short in every interval
    assert opt.lp_bound <= opt.cost + 1e-9


def test_met_demand_first_then_cost():
    # 450 w/s under $4/h: 1 big + 1 small (500 w/s, $4/h) meets it; 4 small ($4/h, 400 w/s) would not
    arrival, work = flat(450)
    opt = offline_optimum([SMALL, BIG], arrival, work, 30.0, window_s=1.0, horizon_s=299.0, max_hourly_cost=4.0)
    assert all(step == {"small": 1, "big": 1} for step in opt.plan) and opt.unmet_work == 0.0
    # 350 w/s: met by 1 big ($3/h) or 4 small ($4/h): the cheaper one
    arrival, work = flat(350)
    opt = offline_optimum([SMALL, BIG], arrival, work, 30.0, window_s=1.0, horizon_s=299.0, max_hourly_cost=4.0)
    assert all(step == {"small": 0, "big": 1} for step in opt.plan)


def burst():
    """One pool at 50 w/s, plus 750 w/s for 30 s from second 150: 3 replicas needed in interval 5, 60 s lead."""
    pool = PoolModel("gpu", price_per_hour=3.6, capacity=100.0, min_replicas=0, max_replicas=5, cold_start_s=60)
    arrival = np.concatenate([np.arange(0, 300, 1.0), 150 + np.arange(0, 30, 0.1)])
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order]
    work = np.concatenate([np.full(300, 50.0), np.full(300, 25.0)])[order]
    return pool, arrival, work


def test_cold_start_reference_pays_its_lead_time_within_the_budget():
    # the burst of test_simulate's clairvoyant test: 1 replica, 3 needed in interval 5, a 60 s (2 interval) lead
    pool, arrival, work = burst()
    free = clairvoyant_cold_start([pool], arrival, work, 30.0, window_s=1.0, horizon_s=299.0)
    assert [p["gpu"] for p in free.plan] == [1, 1, 1, 3, 3, 3, 1, 1, 1, 1]
    capped = clairvoyant_cold_start([pool], arrival, work, 30.0, window_s=1.0, horizon_s=299.0, max_hourly_cost=7.2)
    # two replicas at most, and the second still asked for two intervals ahead of the burst
    assert [p["gpu"] for p in capped.plan] == [1, 1, 1, 2, 2, 2, 1, 1, 1, 1]
    assert capped.peak_hourly_cost == pytest.approx(7.2)
    assert capped.unmet_work == pytest.approx(100.0 * 30.0)            # the burst's third replica, one interval
    assert capped.cost < free.cost


def test_budget_wins_over_min_replicas():
    pricey = PoolModel("p", price_per_hour=2.0, capacity=100.0, min_replicas=3, max_replicas=6, cold_start_s=30)
    arrival, work = flat(150)
    opt = offline_optimum([pricey], arrival, work, 30.0, window_s=1.0, horizon_s=299.0, max_hourly_cost=4.0)
    assert max(cost_rate(opt.plan, [pricey])) <= 4.0 and all(step["p"] == 2 for step in opt.plan)


def test_simulate_references_stay_within_the_budget_and_report_their_peak():
    rng = np.random.default_rng(5)
    t = np.sort(rng.uniform(0, 900, 9000))
    t -= t[0]
    rate = np.where(t < 450, 1.0, 3.0)                               # demand triples halfway
    keep = rng.random(9000) < rate / 3.0
    tr = Trace(
        "step", t[keep] - t[keep][0], np.full(keep.sum(), 1000.0), np.zeros(keep.sum()), np.full(keep.sum(), 60.0)
    )
    s = Settings(ttft_p95_s=3.0, tpot_p95_s=None, weights=WorkWeights(prompt=0.2), max_hourly_cost=6.0)
    out = simulate(tr, [SMALL, BIG], s, ["optimum", "optimum-cold-start"])
    for name, opt in (("optimum", out["optimum"]), ("optimum-cold-start", out["cold_start_optimum"])):
        assert opt.peak_hourly_cost <= 6.0 + 1e-9, name
        assert out["results"][name].peak_hourly_cost <= 6.0 + 1e-9, name
        assert out["results"][name].budget_violation_s == 0.0, name
    free = simulate(tr, [SMALL, BIG], Settings(ttft_p95_s=3.0, tpot_p95_s=None, weights=WorkWeights(prompt=0.2)),
                    ["optimum"])
    assert free["optimum"].peak_hourly_cost > 6.0                     # so the budget did bind


# ------------------------------------------------------------------- maxCostPerMillionTokens (issue 11)
def test_cost_per_million_caps_every_interval_at_its_arriving_tokens():
    # 600 w/s needs 1 big + 2 small ($5/h). At 1000 tokens/s arriving, $1/1M allows $3.6/h: 1 big (400 w/s) is the
    # widest mix within it, so the reference serves 400 and reports the rest unmet instead of breaking the cap.
    arrival, work = flat(600)
    tokens = np.full(len(arrival), 1000.0)
    free = offline_optimum([SMALL, BIG], arrival, work, 30.0, window_s=1.0, horizon_s=299.0)
    assert max(cost_rate(free.plan, [SMALL, BIG])) == pytest.approx(5.0)    # 1 big + 2 small
    opt = offline_optimum([SMALL, BIG], arrival, work, 30.0, window_s=1.0, horizon_s=299.0,
                          max_cost_per_million=1.0, tokens=tokens)
    assert all(step == {"small": 0, "big": 1} for step in opt.plan)
    assert opt.peak_hourly_cost <= 3.6 + 1e-9
    assert opt.unmet_work == pytest.approx(200.0 * 30.0 * len(opt.plan))
    # both budgets: the lower cap binds ($3/h here)
    both = offline_optimum([SMALL, BIG], arrival, work, 30.0, window_s=1.0, horizon_s=299.0, max_hourly_cost=3.0,
                           max_cost_per_million=1.0, tokens=tokens)
    assert both.peak_hourly_cost <= 3.0 + 1e-9


def test_cost_per_million_never_goes_below_the_cheapest_allowed_fleet():
    # almost no tokens arrive: the cap allows ~$0/h, but one replica of the cheapest pool is kept (keep_one)
    arrival, work = flat(50)
    opt = offline_optimum([SMALL, BIG], arrival, work, 30.0, window_s=1.0, horizon_s=299.0,
                          max_cost_per_million=0.01, tokens=np.full(len(arrival), 1.0))
    assert all(step == {"small": 1, "big": 0} for step in opt.plan)


def test_clairvoyance_does_not_lift_the_cap_ahead_of_a_burst():
    # The burst of the cold-start test (3 replicas needed in interval 5, 60 s lead). Tokens arrive with the work, so
    # before the burst the $/1M cap pays for one replica only: the reference cannot buy the burst's replicas ahead
    # of it, and serves the burst with what the burst's own intervals allow once they are ready.
    pool, arrival, work = burst()
    tokens = work * 20.0    # 1000 tokens/s at the base load: $1/1M allows $3.6/h = one replica
    free = clairvoyant_cold_start([pool], arrival, work, 30.0, window_s=1.0, horizon_s=299.0)
    capped = clairvoyant_cold_start([pool], arrival, work, 30.0, window_s=1.0, horizon_s=299.0,
                                    max_cost_per_million=1.0, tokens=tokens)
    assert [p["gpu"] for p in free.plan][3:5] == [3, 3]          # bought two intervals ahead without the cap
    assert [p["gpu"] for p in capped.plan][:5] == [1, 1, 1, 1, 1]  # with it, nothing extra before the burst
    assert capped.cost < free.cost and capped.unmet_work > free.unmet_work


def test_simulate_references_honour_the_cost_per_million_cap():
    rng = np.random.default_rng(7)
    t = np.sort(rng.uniform(0, 600, 6000))
    t -= t[0]
    n = len(t)
    tr = Trace("flat", t, np.full(n, 1000.0), np.zeros(n), np.full(n, 60.0))
    loose = Settings(ttft_p95_s=3.0, tpot_p95_s=None, weights=WorkWeights(prompt=0.2))
    tight = Settings(ttft_p95_s=3.0, tpot_p95_s=None, weights=WorkWeights(prompt=0.2), max_cost_per_million=0.1)
    free = simulate(tr, [SMALL, BIG], loose, ["optimum-cold-start"])
    capped = simulate(tr, [SMALL, BIG], tight, ["optimum-cold-start"])
    # ~10.6k tokens/s x $0.1/1M = $3.8/h: below what the free reference spends, so the cap binds on it
    assert free["cold_start_optimum"].peak_hourly_cost > 3.9
    assert capped["cold_start_optimum"].peak_hourly_cost <= 10600 * 0.1 * 3600 / 1e6 * 1.05
    assert capped["optimum"].peak_hourly_cost <= 10600 * 0.1 * 3600 / 1e6 * 1.05


def test_an_ulp_between_two_sums_of_the_same_prices_does_not_drop_min_replicas():
    # Quiet intervals sit at the floor (floor_cost_rate, a Python sum); the minimums' cost is a numpy dot product
    # of the same prices, which can come out one ulp higher. That must not read as "the budget wins over
    # minReplicas" (found by review: these prices dropped all eight minimum replicas).
    pools = [PoolModel(n, price_per_hour=pr, capacity=100.0, min_replicas=k, max_replicas=10, cold_start_s=0)
             for n, pr, k in (("a", 35.26, 3), ("b", 20.48, 2), ("c", 13.84, 3))]
    arrival = np.arange(300.0)
    opt = offline_optimum(pools, arrival, np.full(300, 10.0), 30.0, window_s=1.0, horizon_s=299.0,
                          max_cost_per_million=1.0, tokens=np.ones(300))
    assert all(step == {"a": 3, "b": 2, "c": 3} for step in opt.plan)


def test_cost_per_million_budget_counts_tokens_like_the_demand_and_refuses_bad_tokens():
    from moe_operator.autoscaling.simulate.optimum import interval_budgets
    # an arrival past the horizon drops out (as interval_demands drops its work), it does not land in the last interval
    b = interval_budgets([SMALL], np.array([0.0, 100.0, 1000.0]), np.array([1.0, 1.0, 1e9]), 4, 30.0, None, 1.0,
                         horizon_s=110.0)
    assert b.max() == pytest.approx(SMALL.price_per_hour)      # only the floor: two tokens cap at ~$0/h
    with pytest.raises(ValueError, match="finite"):
        interval_budgets([SMALL], np.array([0.0, 1.0]), np.array([1.0, np.nan]), 1, 30.0, None, 1.0)
