"""Property: whatever the pools, load, latency and history, the hourly budget is never exceeded."""
from hypothesis import given, settings as hsettings, strategies as st

from moe_operator.autoscaling import History, Observation, PoolModel, Settings, decide

pool = st.builds(
    lambda i, price, cap, lo, span: PoolModel(f"p{i}", price, cap, lo, lo + span, 60),
    st.integers(0, 10**6), st.floats(0.5, 80), st.floats(100, 5000), st.integers(0, 4), st.integers(0, 8),
)


@hsettings(max_examples=150, deadline=None)
@given(
    pools=st.lists(pool, min_size=1, max_size=3, unique_by=lambda p: p.name),
    budget=st.floats(1, 500),
    loads=st.lists(st.tuples(st.floats(0, 50000), st.floats(0, 200), st.one_of(st.none(), st.floats(0, 20))), min_size=1, max_size=8),
    stale=st.booleans(),
    cpm=st.one_of(st.none(), st.floats(0.01, 50)),
)
def test_hourly_budget_never_exceeded(pools, budget, loads, stale, cpm):
    s = Settings(max_hourly_cost=budget, max_cost_per_million=cpm, scale_down_stabilization_s=120)
    history = History(desired={p.name: p.max_replicas for p in pools})  # start over budget on purpose
    for k, (gen, queue, ttft) in enumerate(loads):
        t = 30.0 * k
        o = Observation(t - (500 if stale and k % 2 else 0), {"generated": gen, "prompt": gen * 3, "cached_prompt": 0},
                        requests_per_s=gen / 200, queue_depth=queue, ttft_p95_s=ttft, ready=dict(history.desired or {}))
        d = decide(o, pools, s, history, t)
        assert d.cost_per_hour <= budget + 1e-6
        assert all(0 <= d.replicas[p.name] <= p.max_replicas for p in pools)
        history = d.history
