"""Properties: whatever the pools, load, latency and history, both budgets are caps.

* maxHourlyCost is never exceeded by what is asked for (replicas still starting included: they are paid from the
  moment they are asked for), held decisions included.
* maxCostPerMillionTokens: the decided fleet's $/1M at the observed demand (the decision's demand_tokens_per_s:
  tokens arriving; tests/autoscaling/test_policy.py checks that figure) is within the limit, unless the fleet is
  the cheapest one the spec allows (minReplicas, and one replica), which the cap never goes below.
"""
import itertools

from hypothesis import given, settings as hsettings, strategies as st

from moe_operator.autoscaling import History, Observation, PoolModel, Settings, decide
from moe_operator.autoscaling.mix import cost_of

pool = st.builds(
    lambda i, price, cap, lo, span, prefill, cold: PoolModel(
        f"p{i}", price, cap, lo, lo + span, cold, prefill_tps=prefill
    ),
    st.integers(0, 10**6),
    st.floats(0.5, 80),
    st.floats(100, 5000),
    st.integers(0, 4),
    st.integers(0, 8),
    st.one_of(st.just(0.0), st.floats(1000, 100000)),
    st.sampled_from([0.0, 60.0, 120.0, 600.0]),
)
load = st.tuples(
    st.floats(0, 50000),                                  # generated tokens/s
    st.floats(0, 20),                                     # prompt tokens per generated token
    st.floats(0, 200),                                    # queue depth
    st.one_of(st.none(), st.floats(0, 60)),               # TTFT p95 s
    st.one_of(st.none(), st.floats(0, 0.5)),              # TPOT p95 s
    st.floats(0, 1),                                      # share of the asked replicas ready
)


def cheapest_allowed(pools, hourly):
    """$/hour of the cheapest fleet within minReplicas..maxReplicas with at least one replica (capped by hourly)."""
    fleets = list(itertools.product(*[range(p.min_replicas, p.max_replicas + 1) for p in pools]))
    best = min((sum(n * p.price_per_hour for n, p in zip(ns, pools)) for ns in fleets if sum(ns) > 0),
               default=sum(p.min_replicas * p.price_per_hour for p in pools))   # maxReplicas 0 everywhere
    return best if hourly is None else min(best, hourly)


def replay(pools, s, loads, stale, start):
    history = History(desired=start)
    for k, (gen, prompt_ratio, queue, ttft, tpot, ready_share) in enumerate(loads):
        t = 30.0 * k
        asked = dict(history.desired or {})
        ready = {name: int(n * ready_share) for name, n in asked.items()}
        o = Observation(t - (500 if stale and k % 2 else 0),
                        {"generated": gen, "prompt": gen * prompt_ratio, "cached_prompt": 0},
                        requests_per_s=gen / 200, queue_depth=queue, ttft_p95_s=ttft, tpot_p95_s=tpot, ready=ready)
        d = decide(o, pools, s, history, t)
        yield o, d
        history = d.history


@hsettings(max_examples=150, deadline=None)
@given(
    pools=st.lists(pool, min_size=1, max_size=3, unique_by=lambda p: p.name),
    budget=st.floats(1, 500),
    loads=st.lists(load, min_size=1, max_size=8),
    stale=st.booleans(),
    cpm=st.one_of(st.none(), st.floats(0.01, 50)),
)
def test_hourly_budget_never_exceeded(pools, budget, loads, stale, cpm):
    s = Settings(max_hourly_cost=budget, max_cost_per_million=cpm, scale_down_stabilization_s=120)
    start = {p.name: p.max_replicas for p in pools}          # start over budget on purpose
    for _, d in replay(pools, s, loads, stale, start):
        assert d.cost_per_hour <= budget + 1e-6
        assert cost_of(pools, d.replicas) == d.cost_per_hour
        assert all(0 <= d.replicas[p.name] <= p.max_replicas for p in pools)


@hsettings(max_examples=150, deadline=None)
@given(
    pools=st.lists(pool, min_size=1, max_size=3, unique_by=lambda p: p.name),
    cpm=st.floats(0.01, 50),
    hourly=st.one_of(st.none(), st.floats(1, 500)),
    loads=st.lists(load, min_size=1, max_size=8),
    stale=st.booleans(),
    start_full=st.booleans(),
)
def test_cost_per_million_is_a_fleet_cap_unless_at_the_cheapest_allowed_fleet(pools, cpm, hourly, loads, stale,
                                                                             start_full):
    s = Settings(max_cost_per_million=cpm, max_hourly_cost=hourly, scale_down_stabilization_s=120)
    start = {p.name: (p.max_replicas if start_full else p.min_replicas) for p in pools}
    floor = cheapest_allowed(pools, hourly)
    for o, d in replay(pools, s, loads, stale, start):
        if d.held:
            continue               # no fresh demand: the cap cannot be evaluated, nothing scales (hourly still holds)
        assert d.demand_tokens_per_s >= 0
        allowed = cpm * d.demand_tokens_per_s * 3600 / 1e6
        assert d.cost_per_hour <= allowed + 1e-6 or d.cost_per_hour <= floor + 1e-6, (d.replicas, d.reason)
        if d.cost_per_hour > allowed + 1e-6:
            c = {c.type: c for c in d.conditions}["BudgetLimited"]
            assert c.status == "True" and c.reason in ("MaxCostPerMillionTokens", "MaxHourlyCost")
