"""simulate/metrics.py and the figures `moectl simulate` reports from it: attainable requests, peak $/h, seconds
over the budget."""
import json

import numpy as np
import pytest

from moe_operator.autoscaling import PoolModel, Settings, WorkWeights
from moe_operator.autoscaling.simulate.metrics import (FLUID_MIN_LOAD, asked_cost_rate, attainable, attainable_fluid,
                                                        attainable_replica, budget_violation_seconds,
                                                        cost_per_million_violation_seconds, floor_cost_rate,
                                                        peak_hourly_cost)
from moe_operator.autoscaling.simulate.run import replay, simulate
from moe_operator.autoscaling.simulate.traces import Trace


def test_attainable_prefill_cached_and_tpot_per_pool():
    prompt = np.array([1000.0, 30000.0, 1000.0])
    cached = np.array([0.0, 0.0, 90000.0])
    # one pool, 10k computed tokens/s: 0.1 s, 3 s, 0.1 s of prefill; TTFT target 2 s
    assert attainable(prompt, cached, 2.0, 0.1, [10000.0], [0.01]).tolist() == [True, False, True]
    # cached tokens charged at 30k/s when the model knows the rate: the third needs 0.1 + 3 s
    assert attainable(prompt, cached, 2.0, 0.1, [10000.0], [0.01], [30000.0]).tolist() == [True, False, False]
    # a replica that is too slow per output token even unloaded makes every request unattainable
    assert not attainable(prompt, cached, 2.0, 0.1, [10000.0], [0.2]).any()
    # two pools: the fast-prefill one is too slow per token, so the 30k prompt has no pool that meets both
    two = attainable(prompt, cached, 2.0, 0.1, [20000.0, 10000.0], [0.2, 0.01])
    assert two.tolist() == [True, False, True]
    # the 30k prompt fits a pool that is fast at both
    assert attainable(prompt, cached, 2.0, 0.1, [20000.0, 10000.0], [0.01, 0.01])[1]
    # no targets: everything is attainable; no prefill rate: prefill is free
    assert attainable(prompt, cached, None, None, [10000.0], [5.0]).all()
    assert attainable(prompt, cached, 2.0, 0.1, [0.0], [0.01]).all()
    with pytest.raises(ValueError):
        attainable(prompt, cached, 2.0, 0.1, [1.0, 2.0], [0.01])


def _pool(**kw):
    base = dict(name="a", price_per_hour=3.6, capacity=1000.0, min_replicas=0, max_replicas=4, cold_start_s=60,
                tpot_at_capacity_s=0.2, prefill_tps=5000.0)
    base.update(kw)
    return PoolModel(**base)


def test_fluid_unloaded_latency_matches_the_replay():
    """attainable_fluid's idea of an unloaded replica is what fleet.py does to a request on an idle fleet: TPOT =
    FLUID_MIN_LOAD x tpot_at_capacity, TTFT = own prefill; so requests it calls attainable are met there and
    the others are not."""
    pool = _pool()
    arrival = np.arange(0.0, 200.0, 20.0)                      # one request every 20 s: never a queue
    prompt = np.where(np.arange(len(arrival)) % 2 == 0, 2000.0, 20000.0)   # 0.4 s or 4 s of prefill
    tr = Trace("sparse", arrival, prompt, np.zeros(len(arrival)), np.full(len(arrival), 10.0))
    s = Settings(ttft_p95_s=2.0, tpot_p95_s=0.07, weights=WorkWeights(prompt=0.2))
    r = replay(tr, [pool], s, lambda o, rep, t: {"a": 4})
    ok = attainable_fluid(tr.prompt, tr.cached, [pool], 2.0, 0.07)
    assert ok.tolist() == [True, False] * 5
    assert r.met.tolist() == ok.tolist()
    assert r.slo_attainment == pytest.approx(0.5)
    assert r.attainable_slo_attainment == pytest.approx(1.0) and r.unattainable_requests == 5
    # the TPOT floor: 0.3 x 0.2 = 0.06 s meets 0.07; a target of 0.05 makes every request unattainable
    assert FLUID_MIN_LOAD * pool.tpot_at_capacity_s == pytest.approx(0.06)
    assert not attainable_fluid(tr.prompt, tr.cached, [pool], 2.0, 0.05).any()
    tight = replay(tr, [pool], Settings(ttft_p95_s=2.0, tpot_p95_s=0.05, weights=WorkWeights(prompt=0.2)),
                   lambda o, rep, t: {"a": 4})
    assert tight.slo_attainment == 0.0 and tight.attainable_slo_attainment == 1.0   # none attainable: vacuous


def test_replica_unloaded_latency_matches_the_replay():
    """attainable_replica's unloaded replica is the per-replica model's: TTFT = prefill_s(computed, cached), TPOT =
    step_s(1), no TPOT for a one-token answer."""
    from moe_operator.autoscaling.simulate.serving import ServingProfile

    pool = _pool()
    prof = ServingProfile(max_batch=8, kv_tokens=200000, prefill_tps=5000.0, cached_prefill_tps=50000.0,
                          step_base_s=0.04, step_per_seq_s=0.01)
    n = 12
    arrival = np.arange(0.0, 20.0 * n, 20.0)
    prompt = np.tile([2000.0, 2000.0, 20000.0], n // 3)          # 0.4 s, 0.4 s + cached, 4 s of prefill
    cached = np.tile([0.0, 90000.0, 0.0], n // 3)               # 90k cached at 50k/s: 1.8 s more
    output = np.tile([50.0, 50.0, 1.0], n // 3)                 # the long prompt answers one token: no TPOT
    tr = Trace("sparse", arrival, prompt, cached, output)
    s = Settings(ttft_p95_s=2.0, tpot_p95_s=0.06, weights=WorkWeights(prompt=0.2))
    r = replay(tr, [pool], s, lambda o, rep, t: {"a": 2}, profiles={"a": prof})
    ok = attainable_replica(prompt, cached, output, [pool], {"a": prof}, 2.0, 0.06)
    assert ok.tolist() == [True, False, False] * (n // 3)
    assert r.met.tolist() == ok.tolist() and r.attainable.tolist() == ok.tolist()
    assert r.attainable_slo_attainment == 1.0
    # unloaded TPOT 0.05 s: a 0.04 s target makes the 50-token answers unattainable, not the one-token one
    assert attainable_replica(prompt, np.zeros(n), output, [pool], {"a": prof}, 5.0, 0.04).tolist() == \
        [False, False, True] * (n // 3)


def test_attainable_attainment_counts_only_what_could_be_met():
    """A starved fleet misses attainable requests too: attainable attainment is below 1, above plain attainment."""
    rng = np.random.default_rng(0)
    arrival = np.sort(rng.uniform(0, 300, 3000))
    arrival -= arrival[0]
    prompt = np.where(rng.random(3000) < 0.2, 20000.0, 500.0)   # a fifth cannot meet 2 s on 5000 tokens/s
    tr = Trace("mixed", arrival, prompt, np.zeros(3000), np.full(3000, 20.0))
    s = Settings(ttft_p95_s=2.0, tpot_p95_s=0.1, weights=WorkWeights(prompt=0.05))
    pool = _pool(tpot_at_capacity_s=0.05)
    starved = replay(tr, [pool], s, lambda o, rep, t: {"a": 1})     # ~440 w/s into 1000: fine; then 1 replica
    rich = replay(tr, [pool], s, lambda o, rep, t: {"a": 4})
    assert rich.unattainable_requests == int((prompt > 10000).sum())
    assert rich.attainable_slo_attainment == pytest.approx(1.0)
    assert rich.slo_attainment < 0.85
    assert starved.attainable_slo_attainment >= starved.slo_attainment
    met_ok = rich.met[rich.attainable]
    assert met_ok.all()


def test_peak_hourly_cost_counts_starting_replicas_and_budget_seconds():
    tr = Trace("flat", np.arange(0.0, 300.0, 0.5), np.full(600, 100.0), np.zeros(600), np.full(600, 10.0))
    pool = _pool(cold_start_s=600)              # the extra replicas never get ready within the trace
    s = Settings(ttft_p95_s=5.0, tpot_p95_s=1.0, weights=WorkWeights(prompt=0.2), max_hourly_cost=7.2)

    def policy(obs, rep, t):                    # 1 replica, 3 from t = 60 to t = 120, then 1 again
        return {"a": 3} if 60 <= t < 120 else {"a": 1}

    r = replay(tr, [pool], s, policy)
    assert r.peak_hourly_cost == pytest.approx(3 * 3.6)            # paid while starting
    assert r.budget_violation_s == pytest.approx(60.0)              # 10.8 $/h > 7.2 for 60 s
    doc = r.to_json()
    assert doc["peakHourlyCost"] == pytest.approx(10.8) and doc["budgetViolationSeconds"] == 60.0
    assert doc["costPerMillionViolationSeconds"] is None            # no maxCostPerMillionTokens
    for key in ("totalCost", "costPerMillionTokens", "sloAttainment", "scaleActions", "unmetDemandTokens",
                "meanReplicas", "peakReplicas"):                     # version 1 keys stay
        assert key in doc
    free = replay(tr, [pool], Settings(ttft_p95_s=5.0, weights=WorkWeights(prompt=0.2)), policy)
    assert free.budget_violation_s == 0.0 and free.peak_hourly_cost == pytest.approx(10.8)


def test_series_helpers():
    # (t, arrived, capacity, asked, cost $/h, served work/s): 4 x $1/h, then 2 x $5/h (and $2/h still draining)
    pools = [_pool(name="a", price_per_hour=1.0), _pool(name="b", price_per_hour=5.0)]
    series = [(float(t), 0.0, 0.0, {"a": 4, "b": 0} if t < 30 else {"a": 0, "b": 2},
               4.0 if t < 30 else 12.0, 100.0 if t < 30 else 0.0) for t in range(90)]
    rates = asked_cost_rate(series, pools)
    assert rates[0] == 4.0 and rates[-1] == 10.0
    assert peak_hourly_cost(rates) == 10.0 and peak_hourly_cost(np.array([])) == 0.0
    assert peak_hourly_cost(np.array([s[4] for s in series])) == 12.0     # paid, draining included
    assert budget_violation_seconds(rates, 8.0) == 60.0
    assert budget_violation_seconds(rates, 10.0) == 0.0 and budget_violation_seconds(rates, None) == 0.0
    series = [s[:4] + (10.0 if s[0] >= 30 else 4.0,) + s[5:] for s in series]
    # first 30 s: $4/h serving 100 tokens/s = 11.1 $/1M; then $10/h serving nothing (above a $4/h floor)
    assert cost_per_million_violation_seconds(series, 20.0, 30.0, 1.0, floor_rate=4.0) == 60.0
    assert cost_per_million_violation_seconds(series, 5.0, 30.0, 1.0, floor_rate=4.0) == 60.0   # at the floor: no
    assert cost_per_million_violation_seconds(series, 5.0, 30.0, 1.0, floor_rate=2.0) == 90.0   # above it: yes
    assert cost_per_million_violation_seconds(series, 5.0, 30.0, 1.0, floor_rate=10.0) == 0.0   # all at the floor
    assert cost_per_million_violation_seconds(series, None, 30.0, 1.0, floor_rate=4.0) is None


def test_floor_cost_rate():
    a, b = _pool(name="a", price_per_hour=3.0), _pool(name="b", price_per_hour=2.0)
    assert floor_cost_rate([a, b]) == 2.0                    # at least one replica, the cheapest
    assert floor_cost_rate([a, b], keep_one=False) == 0.0    # scale to zero
    assert floor_cost_rate([_pool(name="a", price_per_hour=3.0, min_replicas=2), b]) == 6.0


def test_simulate_reports_new_figures_for_every_policy():
    rng = np.random.default_rng(3)
    arrival = np.sort(rng.uniform(0, 600, 6000))
    arrival -= arrival[0]
    tr = Trace("s", arrival, np.full(6000, 400.0), np.zeros(6000), np.full(6000, 50.0))
    pools = [_pool(name="a", tpot_at_capacity_s=0.02), _pool(name="b", price_per_hour=2.0, capacity=600.0,
                                                             tpot_at_capacity_s=0.03)]
    s = Settings(ttft_p95_s=2.0, tpot_p95_s=0.1, weights=WorkWeights(prompt=0.2), max_hourly_cost=9.0,
                 max_cost_per_million=5.0)
    out = simulate(tr, pools, s, ["ours", "hpa", "optimum", "optimum-cold-start"])
    for name, r in out["results"].items():
        doc = r.to_json()
        assert 0.0 <= doc["attainableSloAttainment"] <= 1.0, name
        assert doc["peakHourlyCost"] > 0 and doc["budgetViolationSeconds"] >= 0
        assert doc["costPerMillionViolationSeconds"] is not None
        json.dumps(doc)
    for ref in ("optimum", "optimum-cold-start"):           # the references keep to the budget
        assert out["results"][ref].peak_hourly_cost <= 9.0 + 1e-9
        assert out["results"][ref].budget_violation_s == 0.0


def test_cli_json_has_the_new_keys(tmp_path, capsys):
    from pathlib import Path

    from moe_operator.cli.main import main

    spec = Path(__file__).resolve().parents[2] / "bench" / "autoscale_two_pool.yaml"
    f = tmp_path / "t.jsonl"
    f.write_text("".join(json.dumps({"timestamp": i * 200, "input_length": 3000, "output_length": 80,
                                     "hash_ids": [i]}) + "\n" for i in range(900)))
    assert (
        main(["simulate", "--trace", str(f), "--spec", str(spec), "--policy", "ours,optimum-cold-start", "--json"]) == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == 1
    assert doc["spec"]["budget"] == {"maxHourlyCost": 40.0, "maxCostPerMillionTokens": None}
    assert doc["optimum"]["peakHourlyCost"] <= 40.0 and "unmetDemandWorkUnits" in doc["optimum"]
    assert doc["coldStartOptimum"]["peakHourlyCost"] <= 40.0
    for r in doc["policies"].values():
        assert {"attainableSloAttainment", "unattainableRequests", "peakHourlyCost", "budgetViolationSeconds",
                "costPerMillionViolationSeconds"} <= set(r)
    assert main(["simulate", "--trace", str(f), "--spec", str(spec), "--policy", "ours"]) == 0
    table = capsys.readouterr().out
    assert "attainable SLO" in table and "peak $/h" in table and "over budget s" in table
