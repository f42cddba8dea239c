"""Simulator sanity: traces parse, the queueing model charges and delays as documented, the optimum bounds."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from helpers import two_pools
from moe_operator.autoscaling import PoolModel, Settings, WorkWeights
from moe_operator.autoscaling.simulate.optimum import clairvoyant_cold_start, offline_optimum
from moe_operator.autoscaling.simulate.run import replay, simulate
from moe_operator.autoscaling.simulate.policies import StaticPeak
from moe_operator.autoscaling.simulate.traces import Trace, load_trace
from moe_operator.errors import UserError

# The shared traces sit beside the checkout (../shared/traces), as on developer machines and in CI;
# MOE_TRACES_DIR points elsewhere, and a clone made somewhere else falls back to the workspace's copy.
_CANDIDATES = [os.environ.get("MOE_TRACES_DIR"), Path(__file__).resolve().parents[3] / "shared" / "traces",
               "/work/shared/traces"]
TRACES = next((str(c) for c in _CANDIDATES if c and Path(c).is_dir()), str(_CANDIDATES[1]))


def synthetic(rate_per_s, seconds, prompt=100, output=50, seed=1):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, seconds, int(rate_per_s * seconds)))
    n = len(t)
    return Trace("synthetic", t - t[0], np.full(n, float(prompt)), np.zeros(n), np.full(n, float(output)))


def test_mooncake_prefix_cache_and_azure_columns(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [1, 2, 3]}\n'
                 '{"timestamp": 2000, "input_length": 1200, "output_length": 7, "hash_ids": [1, 2, 9]}\n'
                 '{"timestamp": 4000, "input_length": 600, "output_length": 1, "hash_ids": [7, 1]}\n')
    t = load_trace(m, speedup=2.0)
    assert list(t.arrival_s) == [0.0, 1.0, 2.0]
    assert list(t.cached) == [0, 1024, 0]          # request 2 re-uses the 2-block prefix; request 3's prefix is new
    assert list(t.prompt) == [1100, 176, 600]
    a = tmp_path / "a.csv"
    a.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,100,10\n2023-11-16 "
        "18:17:05.4799600,50,5\n"
    )
    ta = load_trace(a, cache_hit_ratio=0.2)
    assert ta.arrival_s[1] == pytest.approx(1.5) and ta.cached[0] == pytest.approx(20)


@pytest.mark.parametrize("body,suffix,match", [
    ("TIMESTAMP,Foo\n1,2\n", ".csv", "expected CSV columns"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,1,2\n", ".csv", "not a date-time"),
    ('{"timestamp": 0}\n', ".jsonl", "expected JSON"),
    ("", ".jsonl", "no requests"),
    ("x", ".txt", "unknown format"),
])
def test_malformed_traces_are_user_errors(tmp_path, body, suffix, match):
    f = tmp_path / f"t{suffix}"
    f.write_text(body)
    with pytest.raises(UserError, match=match):
        load_trace(f)


def test_real_traces_load():
    a = load_trace(f"{TRACES}/azure_llm_code_2023.csv")
    m = load_trace(f"{TRACES}/mooncake_conversation.jsonl")
    assert len(a) == 8819 and len(m) == 12031
    assert 0.30 < m.cache_hit_ratio < 0.45       # README: ~37% of Mooncake prompt blocks hit an unlimited cache


def test_replay_cost_and_latency_follow_capacity():
    tr = synthetic(10, 600)                      # 10 req/s x (100 x 0.2 + 50) = 700 work units/s
    pools = [PoolModel("a", 3.6, 1000.0, 0, 4, 60, 0.02, 5000.0)]
    s = Settings(ttft_p95_s=1.0, tpot_p95_s=0.1, weights=WorkWeights(prompt=0.2))
    one = replay(tr, pools, s, lambda o, r, t: {"a": 1})
    two = replay(tr, pools, s, lambda o, r, t: {"a": 2})
    assert two.total_cost == pytest.approx(2 * one.total_cost, rel=0.01)
    assert one.total_cost == pytest.approx(3.6 * 600 / 3600, rel=0.02)   # $3.60/h for ~600 s
    assert one.slo_attainment > 0.9 and two.slo_attainment >= one.slo_attainment
    starved = replay(tr, [PoolModel("a", 3.6, 500.0, 0, 4, 60, 0.02, 5000.0)], s, lambda o, r, t: {"a": 1})
    assert starved.slo_attainment < 0.5        # 700 work units/s into 500: the queue grows without bound


def test_cold_start_delays_capacity():
    tr = synthetic(20, 300)                     # 1400 work units/s
    pools = [PoolModel("a", 1.0, 1000.0, 0, 4, 120, 0.02, 5000.0)]
    s = Settings(ttft_p95_s=1.0, weights=WorkWeights(prompt=0.2))
    late = replay(tr, pools, s, lambda o, r, t: {"a": 1} if t == 0 else {"a": 2})
    warm = replay(tr, pools, s, lambda o, r, t: {"a": 2})
    assert late.slo_attainment < warm.slo_attainment


def test_optimum_is_a_lower_bound_and_integral():
    tr = synthetic(10, 900)
    pools = two_pools()
    w = 0.2 * tr.prompt + tr.output
    opt = offline_optimum(pools, tr.arrival_s, w, 30.0)
    assert opt.lp_bound <= opt.cost + 1e-9
    assert all(isinstance(v, int) for step in opt.plan for v in step.values())
    s = Settings(weights=WorkWeights(prompt=0.2), target_utilization=0.8)
    static = replay(tr, pools, s, StaticPeak(pools, s, float(w.sum() / 900 * 3)))
    assert opt.cost <= static.total_cost


def test_simulate_all_policies_on_synthetic_trace():
    tr = synthetic(15, 600)
    s = Settings(ttft_p95_s=2.0, tpot_p95_s=0.2, weights=WorkWeights(prompt=0.2))
    names = ["ours", "static-peak", "hpa", "ray-serve", "cheapest-pool", "wva-greedy", "optimum", "optimum-cold-start"]
    out = simulate(tr, two_pools(), s, names)
    res = out["results"]
    assert set(res) == set(names)
    assert out["cold_start_optimum"].cost >= out["optimum"].cost - 1e-9
    assert res["ours"].slo_attainment >= 0.95
    assert res["optimum"].total_cost <= res["static-peak"].total_cost
    json.dumps({k: v.to_json() for k, v in res.items()})


def test_clairvoyant_with_cold_start_asks_a_cold_start_ahead_and_costs_at_least_the_optimum():
    # one pool, 60 s cold start = 2 intervals of 30 s; a burst needing 3 replicas in interval 5 only
    pool = PoolModel("gpu", price_per_hour=3.6, capacity=100.0, min_replicas=0, max_replicas=5, cold_start_s=60)
    arrival = np.concatenate([np.arange(0, 300, 1.0), 150 + np.arange(0, 30, 0.1)])
    order = np.argsort(arrival, kind="stable")
    arrival = arrival[order]
    work = np.concatenate([np.full(300, 50.0), np.full(300, 25.0)])[order]   # 50 w/s all along, +250 w/s in [150, 180)
    opt = offline_optimum([pool], arrival, work, 30.0, window_s=1.0, horizon_s=299.0)
    cold = clairvoyant_cold_start([pool], arrival, work, 30.0, window_s=1.0, horizon_s=299.0)
    assert [p["gpu"] for p in opt.plan] == [1, 1, 1, 1, 1, 3, 1, 1, 1, 1]
    # the two extra replicas are asked for (and paid) from interval 3, two intervals before they serve
    assert [p["gpu"] for p in cold.plan] == [1, 1, 1, 3, 3, 3, 1, 1, 1, 1]
    assert cold.cost == pytest.approx(opt.cost + 2 * 2 * 3.6 * 30 / 3600)
    # replayed with cold starts the burst finds its capacity ready; the no-cold-start plan replayed with them does not
    tr = Trace("burst", arrival, work * 0 + 250.0, np.zeros(len(arrival)), np.zeros(len(arrival)))
    s = Settings(ttft_p95_s=2.0, tpot_p95_s=None, weights=WorkWeights(prompt=0.2))
    from moe_operator.autoscaling.simulate.policies import Schedule
    ok = replay(tr, [pool], s, Schedule(cold.plan, 30.0), cold_start=True)
    late = replay(tr, [pool], s, Schedule(opt.plan, 30.0), cold_start=True)
    assert ok.slo_attainment > late.slo_attainment


def test_frontier_plot_is_written(tmp_path):
    from moe_operator.autoscaling.simulate.plots import plot_frontier

    panel = {"title": "t", "sweeps": {"ours": [(1.1, 0.995, "w=600"), (1.5, 0.999, "w=1200")]},
             "points": {"static-peak": (1.9, 0.96), "optimum": (1.0, 1.0)}}
    out = plot_frontier([panel], tmp_path / "img" / "frontier.png")
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
