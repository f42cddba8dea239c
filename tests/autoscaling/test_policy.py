"""Policy unit tests on constructed observations: each constraint binds where it should."""
import random

import pytest

from helpers import obs, settings, two_pools
from moe_operator.autoscaling import History, Observation, decide
from moe_operator.autoscaling.mix import capacity_of, cost_of


def run(series, pools, s, history=None):
    """Feed (t, generated tokens/s) samples; returns the list of decisions."""
    out = []
    for t, g in series:
        d = decide(obs(t, g, ready=(history.desired if history and history.desired else {})), pools, s, history, t)
        history = d.history
        out.append(d)
    return out


def test_cheapest_per_work_first_then_spill():
    pools = two_pools(ascend={"max_replicas": 3})
    d = decide(obs(0, 2900), pools, settings(), None, 0)
    # h800: $20/h per 1500 w/s is cheaper per work unit than ascend: $16/h per 1000 w/s
    assert pools[1].price_per_work < pools[0].price_per_work
    assert capacity_of(pools, d.replicas) >= 2900
    assert d.replicas == {"ascend": 0, "h800": 2}
    # integrality: for 2500 w/s one replica of each ($36) beats two h800 ($40)
    assert decide(obs(0, 2500), pools, settings(), None, 0).replicas == {"ascend": 1, "h800": 1}
    big = decide(obs(0, 16000), pools, settings(), None, 0)
    assert big.replicas["h800"] == 10 and big.replicas["ascend"] >= 1  # spill to the next pool at max
    assert capacity_of(pools, big.replicas) >= 16000


def test_exact_mix_beats_greedy_rounding():
    # need 1100 w/s: greedy by $/unit takes h800 (1500, $20); exact search must pick the cheapest mix covering it.
    pools = two_pools(ascend={"capacity": 1200.0, "price_per_hour": 19.0})
    d = decide(obs(0, 1100), pools, settings(), None, 0)
    assert d.replicas == {"ascend": 1, "h800": 0}
    assert d.cost_per_hour == 19.0


def test_headroom_from_target_utilization():
    pools = two_pools()
    assert decide(obs(0, 1400), pools, settings(target_utilization=1.0), None, 0).replicas["h800"] == 1
    d = decide(obs(0, 1400), pools, settings(target_utilization=0.5), None, 0)
    assert capacity_of(pools, d.replicas) >= 2800


def test_min_and_max_replicas_bind():
    pools = two_pools(ascend={"min_replicas": 2}, h800={"max_replicas": 1})
    low = decide(obs(0, 10), pools, settings(), None, 0)
    assert low.replicas["ascend"] == 2
    high = decide(obs(0, 50000), pools, settings(), None, 0)
    assert high.replicas == {"ascend": 10, "h800": 1}
    assert "maxReplicas reached" in high.reason
    assert high.unmet_tokens_per_s == pytest.approx(50000 - 11500)


def test_budget_binds_with_condition_and_unmet_demand():
    pools = two_pools()
    d = decide(obs(0, 9000), pools, settings(max_hourly_cost=100.0), None, 0)
    assert d.cost_per_hour <= 100.0
    cond = {c.type: c for c in d.conditions}["BudgetLimited"]
    assert cond.status == "True" and "unmet demand" in cond.message
    assert d.unmet_tokens_per_s > 0
    # the widest mix within $100/h: 5 x h800 = 7500 w/s ($100)
    assert capacity_of(pools, d.replicas) == 7500
    ok = decide(obs(0, 3000), pools, settings(max_hourly_cost=100.0), None, 0)
    assert {c.type: c.status for c in ok.conditions}["BudgetLimited"] == "False"


def test_budget_wins_over_min_replicas_and_held_state():
    pools = two_pools(ascend={"min_replicas": 5})
    d = decide(obs(0, 100), pools, settings(max_hourly_cost=40.0), None, 0)
    assert d.cost_per_hour <= 40.0
    held = decide(None, pools, settings(max_hourly_cost=40.0), History(desired={"ascend": 5, "h800": 5}), 10)
    assert held.held and held.cost_per_hour <= 40.0


def test_cost_per_million_is_a_fleet_cap_at_the_observed_demand():
    """maxCostPerMillionTokens caps the whole fleet's $/hour at limit x observed tokens/h / 1e6; it is not a test of
    one pool's marginal replica (which let the issue's fleet run at 5x the limit)."""
    pools = two_pools()
    # 20,000 generated tokens/s: $2/1M allows 2 x 20000 x 3600 / 1e6 = $144/h, less than the $220/h the need takes
    d = decide(obs(0, 20000), pools, settings(max_cost_per_million=2.0), None, 0)
    assert d.cost_per_hour <= 144.0 + 1e-9
    assert d.cost_per_million <= 2.0 + 1e-9
    assert capacity_of(pools, d.replicas) == max(capacity_of(pools, {"ascend": a, "h800": h})
                                                 for a in range(11) for h in range(11) if 16 * a + 20 * h <= 144)
    cond = {c.type: c for c in d.conditions}["BudgetLimited"]
    assert (cond.status, cond.reason) == ("True", "MaxCostPerMillionTokens")
    assert "maxCostPerMillionTokens" in cond.message and "unmet demand" in cond.message
    assert d.unmet_tokens_per_s == pytest.approx(20000 - capacity_of(pools, d.replicas))
    free = decide(obs(0, 20000), pools, settings(), None, 0)
    assert free.cost_per_hour > 144.0
    ok = decide(obs(0, 2000), pools, settings(max_cost_per_million=10.0), None, 0)
    assert {c.type: c.status for c in ok.conditions}["BudgetLimited"] == "False"


def test_demand_is_the_arrival_rate_served_plus_queue_growth():
    """A saturated fleet serves its capacity; what arrives is that plus the queue's growth (work is conserved), and
    that is the demand every need and the $/1M cap see."""
    pools = two_pools()
    s = settings(max_cost_per_million=1000.0)
    d0 = decide(obs(0, 3000, ready={"h800": 2}, queue=0, rps=3.0), pools, s, History(desired={"h800": 2}), 0)
    # 30 s later: 3000 tokens/s served (1000 work units per request), 90 more requests queued = 3000 tokens/s more
    d1 = decide(obs(30, 3000, ready={"h800": 2}, queue=90, rps=3.0), pools, s, d0.history, 30)
    assert d1.demand_tokens_per_s == pytest.approx(6000)
    assert capacity_of(pools, d1.replicas) >= 6000
    # the queue drains: 3000 served, 60 fewer queued = 1000 tokens/s arriving
    d2 = decide(obs(60, 3000, ready={"h800": 2}, queue=30, rps=3.0), pools, s, d1.history, 60)
    assert d2.demand_tokens_per_s == pytest.approx(1000)


def test_cost_per_million_cuts_the_fleet_at_once_when_demand_falls():
    """A cap, not a recommendation: no stabilization window keeps a fleet the observed demand cannot pay for."""
    pools = two_pools()
    s = settings(max_cost_per_million=4.0, scale_down_stabilization_s=600.0, hysteresis=0.15)
    big = decide(obs(0, 9000), pools, s, None, 0)
    assert capacity_of(pools, big.replicas) >= 9000
    d = decide(obs(30, 3000, ready=big.replicas), pools, s, big.history, 30)
    assert d.cost_per_hour <= 4.0 * 3000 * 3600 / 1e6 + 1e-9          # $43.2/h
    assert {c.type: c.reason for c in d.conditions}["BudgetLimited"] == "MaxCostPerMillionTokens"
    unbudgeted = decide(obs(30, 3000, ready=big.replicas), pools, settings(scale_down_stabilization_s=600.0,
                                                                           hysteresis=0.15), big.history, 30)
    assert unbudgeted.replicas == big.replicas                           # the window alone would have kept it


def test_cost_per_million_holds_the_cheapest_allowed_fleet_when_none_meets_it():
    pools = two_pools(ascend={"min_replicas": 1}, h800={"min_replicas": 1})
    d = decide(obs(0, 100), pools, settings(max_cost_per_million=1.0), None, 0)
    assert d.replicas == {"ascend": 1, "h800": 1}                        # $36/h for $0.36/h allowed: minReplicas stay
    cond = {c.type: c for c in d.conditions}["BudgetLimited"]
    assert cond.reason == "MaxCostPerMillionTokens" and "cheapest allowed fleet" in cond.message
    idle = decide(obs(0, 0, rps=0.0), two_pools(), settings(max_cost_per_million=1.0), None, 0)
    assert idle.replicas == {"ascend": 1, "h800": 0}                     # one replica, the cheapest, at no demand
    # with both budgets the lower cap binds and is the one named
    both = decide(obs(0, 20000), pools, settings(max_cost_per_million=2.0, max_hourly_cost=100.0), None, 0)
    assert (
        both.cost_per_hour <= 100.0 and {c.type: c.reason for c in both.conditions}["BudgetLimited"] == "MaxHourlyCost"
    )


def test_cost_per_million_under_noisy_demand_does_not_flap():
    """The $/1M cap follows the observed demand; replicas are added only within the cap at the window's lowest
    demand, so +-15% noise on a demand the cap binds (the fleet has room for the demand, not for the headroom
    targetUtilization asks) does not add replicas one interval and cut them the next."""
    rng = random.Random(3)
    pools = two_pools()
    s = settings(max_cost_per_million=4.6, target_utilization=0.7, scale_down_stabilization_s=300.0, hysteresis=0.15)
    series = [(t, 6000 * (1 + rng.uniform(-0.15, 0.15))) for t in range(0, 3600, 30)]
    ds = run(series, pools, s)
    assert all(d.cost_per_hour <= 4.6 * g * 3600 / 1e6 + 1e-6 for (_, g), d in zip(series, ds))
    assert all(capacity_of(pools, d.replicas) < g / 0.7 for (_, g), d in zip(series, ds))     # the cap binds
    actions = sum(1 for a, b in zip(ds, ds[1:]) if a.replicas != b.replicas)
    # at most one move per scale-down window on average (a cap following every interval's demand moves far more)
    assert actions <= 3600 / 300, [cost_of(pools, d.replicas) for d in ds]


def test_a_budget_binding_names_itself_for_both_budgets():
    pools = two_pools()
    hourly = decide(obs(0, 9000), pools, settings(max_hourly_cost=100.0), None, 0)
    per_m = decide(obs(0, 9000), pools, settings(max_cost_per_million=2.0), None, 0)   # $64.8/h at 9000 tokens/s
    for d, reason, name in ((hourly, "MaxHourlyCost", "maxHourlyCost"),
                            (per_m, "MaxCostPerMillionTokens", "maxCostPerMillionTokens")):
        c = {c.type: c for c in d.conditions}["BudgetLimited"]
        assert (c.status, c.reason) == ("True", reason) and c.message.startswith(name)
        assert "unmet demand" in c.message and c.message in d.reasons


@pytest.mark.parametrize("bad", ["none", "incomplete", "stale"])
def test_no_scale_down_on_missing_or_stale_metrics(bad):
    pools = two_pools()
    s = settings()
    first = decide(obs(0, 9000), pools, s, None, 0)
    if bad == "none":
        o = None
    elif bad == "incomplete":
        o = obs(60, 10)
        o = type(o)(observed_at=60, tokens_per_s=None, queue_depth=0)
    else:
        o = obs(0, 10)  # 1000 s old at decision time
    d = decide(o, pools, s, first.history, 1000)
    assert d.held and d.replicas == first.replicas
    assert "hold" in d.reason
    assert {c.type: (c.status, c.reason) for c in d.conditions}["BudgetLimited"] == ("Unknown", "MetricsUnavailable")


def test_scale_down_waits_for_stabilization_window():
    pools = two_pools()
    s = settings(scale_down_stabilization_s=300.0)
    ds = run([(0, 9000), (30, 1000), (200, 1000), (299, 1000), (301, 1000)], pools, s)
    assert [capacity_of(pools, d.replicas) >= 9000 for d in ds[:4]] == [True] * 4
    assert capacity_of(pools, ds[4].replicas) < 9000


def test_scale_up_stabilization_ignores_short_spike():
    pools = two_pools()
    s = settings(scale_up_stabilization_s=60.0)
    ds = run([(0, 1000), (30, 9000), (60, 1000), (90, 1000)], pools, s)
    assert len({cost_of(pools, d.replicas) for d in ds}) == 1
    assert capacity_of(pools, ds[1].replicas) < 9000


def test_a_trend_is_a_sustained_rise_not_a_step_or_noise():
    from moe_operator.autoscaling.limits import trend_ahead

    ramp = [(30.0 * k, 1000.0 + 100.0 * k) for k in range(10)]           # +100 per 30 s
    assert trend_ahead(ramp, 270.0, 120.0) == pytest.approx(1000 + 100 * 13)
    step = [(30.0 * k, 1000.0 if k < 5 else 3000.0) for k in range(10)]   # one jump, then flat
    assert trend_ahead(step, 270.0, 120.0) is None
    rng = random.Random(1)
    noise = [(30.0 * k, 1000.0 * (1 + rng.uniform(-0.15, 0.15))) for k in range(10)]
    assert trend_ahead(noise, 270.0, 120.0) is None
    assert trend_ahead([(0.0, 1.0), (30.0, 2.0)], 30.0, 120.0) is None   # too few samples to tell


def test_noisy_flat_load_few_actions_per_hour():
    """Flat 6000 w/s +-15% noise every 30 s for an hour: at most 2 actions (the first scale-up and one settle)."""
    rng = random.Random(7)
    pools = two_pools()
    s = settings(target_utilization=0.7, scale_down_stabilization_s=300.0, hysteresis=0.15)
    ds = run([(t, 6000 * (1 + rng.uniform(-0.15, 0.15))) for t in range(0, 3600, 30)], pools, s)
    actions = sum(1 for a, b in zip(ds, ds[1:]) if a.replicas != b.replicas) + 1
    assert actions <= 2


def test_noisy_flat_trace_through_the_simulator_does_not_oscillate():
    """An hour of Poisson arrivals at 6000 w/s +-15% (drawn per 30 s), lognormal prompts and outputs, through the
    per-replica serving model with cold starts: latencies are measured, not given. Few actions, and never a
    reversal (up then down, or down then up) sooner than scaleDownStabilizationSeconds."""
    import dataclasses

    import numpy as np

    from moe_operator.autoscaling import Settings, WorkWeights
    from moe_operator.autoscaling.simulate.policies import Ours
    from moe_operator.autoscaling.simulate.replicas import profiles_for
    from moe_operator.autoscaling.simulate.run import replay
    from moe_operator.autoscaling.simulate.traces import Trace

    rng = np.random.default_rng(0)
    w = WorkWeights(prompt=0.1, cached_prompt=0.01)
    pools = [dataclasses.replace(p, prefill_tps=p.capacity / w.prompt) for p in two_pools()]
    s = Settings(ttft_p95_s=2.0, tpot_p95_s=0.1, target_utilization=0.7, weights=w)
    rate = 6000.0 / (w.prompt * 1000 * np.exp(0.5) + 200 * np.exp(0.32))  # requests/s for 6000 w/s
    t = np.concatenate(
        [
            np.sort(rng.uniform(30 * k, 30 * k + 30, rng.poisson(rate * (1 + rng.uniform(-0.15, 0.15)) * 30)))
            for k in range(120)
        ]
    )
    n = len(t)
    trace = Trace("flat", t - t[0], np.round(rng.lognormal(np.log(1000), 1.0, n)), np.zeros(n),
                  np.maximum(1, np.round(rng.lognormal(np.log(200), 0.8, n))))
    res = replay(trace, pools, s, Ours(pools, s), profiles=profiles_for(pools, 32, weights=w, max_context_tokens=32768))
    moves, last = [], None
    for sec in res.series:
        cap = capacity_of(pools, sec[3])
        if last is not None and cap != last:
            moves.append((sec[0], cap > last))
        last = cap
    assert res.scale_actions <= 4, moves
    assert all(b[0] - a[0] >= s.scale_down_stabilization_s for a, b in zip(moves, moves[1:]) if a[1] != b[1]), moves
    assert res.attainable_slo_attainment >= 0.99


def test_queueing_latency_adds_capacity_and_own_prefill_does_not():
    """A TTFT p95 above target twice (a recurring burst) with no prompt: all of it is queueing, so capacity shortens
    it. The same TTFT with prompts whose own prefill already takes the target adds nothing."""
    pools = two_pools(ascend={"prefill_tps": 10000.0}, h800={"prefill_tps": 10000.0})
    s = settings(ttft_p95_s=2.0)
    calm = decide(obs(0, 1400, ttft=0.5, ready={"h800": 1}), pools, s, None, 0)
    hot = decide(obs(30, 1400, ttft=5.0, ready={"h800": 1}), pools, s,
                 decide(obs(0, 1400, ttft=5.0, ready={"h800": 1}), pools, s, None, 0).history, 30)
    assert capacity_of(pools, hot.replicas) >= 1500 * 5.0 / 2.0 > capacity_of(pools, calm.replicas)
    assert any("latency reserve" in r for r in hot.reasons)
    # 7000 prompt tokens per request at 10,000 tokens/s: own prefill p95 ~ ln 20 x 0.7 s = 2.1 s > the 2 s target
    long_prompts = dict(prompt=7000.0, rps=1.0)
    h = decide(obs(0, 0, ttft=5.0, ready={"h800": 1}, **long_prompts), pools, s, None, 0).history
    d = decide(obs(30, 0, ttft=5.0, ready={"h800": 1}, **long_prompts), pools, s, h, 30)
    assert capacity_of(pools, d.replicas) < 1500 * 5.0 / 2.0
    assert any("capacity cannot shorten it" in r for r in d.reasons)


def test_measured_queue_wait_splits_ttft_where_the_runtime_reports_it():
    """With the runtime's queue wait p95 the policy does not guess the own-prefill part from mean prompts: a TTFT
    that is all prefill (wait 0.2 s, though the mean prompt is short) buys nothing, and a TTFT that is all wait
    (4.5 s, though the mean prompt is long enough for the estimate to call it unfixable) buys capacity."""
    pools = two_pools(ascend={"prefill_tps": 10000.0}, h800={"prefill_tps": 10000.0})
    s = settings(ttft_p95_s=2.0)

    def twice(**kw):
        o = [Observation(observed_at=t, tokens_per_s={"generated": 0.0, "prompt": kw["prompt"], "cached_prompt": 0.0},
                         requests_per_s=1.0, queue_depth=0.0, ttft_p95_s=5.0, queue_wait_p95_s=kw["wait"],
                         ready={"h800": 1}) for t in (0, 30)]
        return decide(o[1], pools, s, decide(o[0], pools, s, None, 0).history, 30)

    own = twice(prompt=100.0, wait=0.2)            # estimate: own prefill ~0.03 s, so 5 s would look like queueing
    assert capacity_of(pools, own.replicas) < 1500 * 2
    assert any("capacity cannot shorten it" in r for r in own.reasons)
    queued = twice(prompt=7000.0, wait=4.5)        # estimate: own prefill ~2.1 s > target, so nothing would help
    assert capacity_of(pools, queued.replicas) >= 1500 * 4.5 / (2.0 - 0.5)
    assert any("latency reserve" in r for r in queued.reasons)


def test_a_latency_reserve_ready_and_unused_for_a_cold_start_goes_back_and_one_in_use_stays():
    """Use it or lose it: once the reserve's replicas serve, a cold start (the longest, 180 s here) of intervals
    none of which needed more than the mean need releases it (holding longer pays for capacity that serves no
    burst; buying it back costs one cold start). A burst that comes back within that time keeps it."""
    pools = two_pools(ascend={"prefill_tps": 10000.0}, h800={"prefill_tps": 10000.0})
    s = settings(ttft_p95_s=2.0)

    def run(burst_every: float | None, until: float):
        h = decide(obs(0, 1400, ttft=5.0, ready={"h800": 1}), pools, s, None, 0).history
        d = decide(obs(30, 1400, ttft=5.0, ready={"h800": 1}), pools, s, h, 30)
        reserve = d.replicas
        assert capacity_of(pools, reserve) >= 1500 * 5.0 / 2.0
        released_at = None
        for t in range(60, int(until) + 1, 30):
            hot = burst_every is not None and t % burst_every == 0
            d = decide(obs(t, 1400, ttft=5.0 if hot else 0.5, ready=dict(d.replicas)), pools, s, d.history, t)
            if released_at is None and any("released" in r for r in d.reasons):
                released_at = t
        return reserve, d, released_at

    reserve, end, released_at = run(None, 600)
    assert released_at is not None and 60 + 180 <= released_at <= 60 + 180 + 30, released_at
    assert capacity_of(pools, end.replicas) < capacity_of(pools, reserve)
    reserve, end, released_at = run(120, 600)
    assert released_at is None and capacity_of(pools, end.replicas) >= capacity_of(pools, reserve)


def test_capacity_corrected_from_saturation():
    pools = two_pools()
    s = settings()
    d0 = decide(obs(0, 3000), pools, s, None, 0)          # model: 2 x h800 = 3000 w/s
    assert d0.replicas == {"ascend": 0, "h800": 2}
    # saturated: queue builds while only 2000 w/s get served -> real capacity is 2/3 of the model
    h = d0.history
    for t in range(30, 400, 30):
        d = decide(obs(t, 2000, ready=d0.replicas, queue=50, ttft=9.0), pools, s, h, t)
        h = d.history
        if d.replicas != d0.replicas:
            break
    assert h.corrections["h800"] < 0.9
    assert capacity_of(pools, d.replicas) > 3000
    # a queue that does not hurt latency is a burst, not saturation: no correction
    calm = decide(obs(30, 2000, ready=d0.replicas, queue=50, ttft=0.5), pools, s, d0.history, 30)
    assert calm.history.corrections.get("h800", 1.0) == 1.0


def test_scale_to_zero_after_idle_plus_cold_start():
    pools = two_pools()
    s = settings(scale_to_zero=True, idle_s=600.0)
    h = decide(obs(0, 1000), pools, s, None, 0).history
    seen = {}
    for t in range(30, 1200, 30):
        d = decide(obs(t, 0, rps=0.0), pools, s, h, t)
        h = d.history
        seen[t] = sum(d.replicas.values())
    assert seen[600] == 1           # idle 570 s: not yet
    assert seen[720] == 1           # idle < idleSeconds + cold start (600 + 120)
    assert seen[780] == 0
    no_zero = decide(obs(2000, 0, rps=0.0), pools, settings(idle_s=600.0), h, 2000)
    assert sum(no_zero.replicas.values()) == 1


def test_wakes_from_zero_on_queue():
    pools = two_pools()
    d = decide(
        obs(0, 0, queue=3, rps=0.0), pools, settings(scale_to_zero=True), History(desired={"ascend": 0, "h800": 0}), 0
    )
    assert sum(d.replicas.values()) >= 1


def test_pool_models_from_the_planner_and_annotation():
    """The adapter: planner capacities for an example spec; the annotation overrides them."""
    from pathlib import Path

    from moe_operator.api import load_manifest
    from moe_operator.autoscaling.from_spec import CAPACITY_ANNOTATION, pool_models_from_spec, settings_from_spec

    root = Path(__file__).resolve().parents[2]
    dep = load_manifest(root / "examples" / "qwen3-moe-mixed.yaml")
    pools, w = pool_models_from_spec(dep)
    assert [p.name for p in pools] == [p.name for p in dep.spec.pools]
    assert all(p.capacity > 0 and p.price_per_hour > 0 for p in pools)
    assert 0 < w.cached_prompt < w.prompt < 1          # cache hits cost less work than computed prompt tokens
    bench = load_manifest(root / "bench" / "autoscale_two_pool.yaml")
    assert CAPACITY_ANNOTATION in bench.metadata.model_extra["annotations"]
    bp, bw = pool_models_from_spec(bench)
    assert {p.name: p.capacity for p in bp} == {"h800": 1500.0, "ascend": 1000.0}
    assert {p.name: p.price_per_hour for p in bp} == {"h800": 2.0, "ascend": 1.15}
    assert bw.prompt == pytest.approx((1500 / 12000 + 1000 / 8000) / 2)
    s = settings_from_spec(bench.spec.autoscaling, bw)
    assert (s.max_hourly_cost, s.target_utilization, s.scale_down_stabilization_s) == (40, 0.8, 300)


def test_a_reserve_that_absorbs_its_bursts_is_in_use_and_stays():
    """A burst the reserve serves shows no latency (TTFT under target with the reserve in place), but its arrivals
    exceed what the mean need would keep: that interval uses the reserve, so it is not released."""
    pools = two_pools(ascend={"prefill_tps": 10000.0}, h800={"prefill_tps": 10000.0})
    s = settings(ttft_p95_s=2.0, scale_down_stabilization_s=60.0)
    h = decide(obs(0, 1400, ttft=5.0, ready={"h800": 1}), pools, s, None, 0).history
    d = decide(obs(30, 1400, ttft=5.0, ready={"h800": 1}), pools, s, h, 30)
    reserve = dict(d.replicas)
    released = []
    for t in range(60, 901, 30):
        burst = t % 150 == 0                      # arrivals x2 for one interval, absorbed: TTFT stays 0.5 s
        d = decide(obs(t, 2800 if burst else 1400, ttft=0.5, ready=dict(d.replicas)), pools, s, d.history, t)
        released += [t for r in d.reasons if "released" in r]
    assert not released and capacity_of(pools, d.replicas) >= capacity_of(pools, reserve)
