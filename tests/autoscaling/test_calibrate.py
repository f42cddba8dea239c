"""`moectl simulate --calibrate`: fit_profile recovers a known ServingProfile from replay-shaped records, refuses
data that cannot identify a parameter, and the CLI prints / passes on what it fitted."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moe_operator.autoscaling.simulate.calibrate import DEFAULT_CACHED_TOKEN_COST, fit_profile
from moe_operator.autoscaling.simulate.serving import ServingProfile
from moe_operator.errors import UserError

TRUE = ServingProfile(max_batch=16, kv_tokens=200_000, prefill_tps=2000.0, cached_prefill_tps=25_000.0,
                      step_base_s=0.02, step_per_seq_s=0.002)
OVERHEAD_S = 0.03   # fixed part of every TTFT (HTTP, scheduling): the fit's intercept


def engine_records(profile: ServingProfile = TRUE, seconds: float = 960.0, seed: int = 0, noise: float = 0.0,
                   rates=(0.1, 0.3, 0.6, 1.0), phase_s: float = 60.0, prompt=(50, 1000), output=(50, 300),
                   cached_share: float = 0.5) -> list[dict]:
    """Replay-shaped records of one replica that follows ``profile`` exactly: a serial prefill lane
    (overhead + computed/prefill_tps + cached/cached_prefill_tps gives the first token), then continuous decode
    steps of step_s(b) over the b sequences decoding at the step's start. Poisson arrivals whose rate changes
    every ``phase_s`` (lulls give idle prefills, bursts give high concurrency); ``noise`` scales every measured
    duration by 1 +- noise (uniform)."""
    rng = np.random.default_rng(seed)
    t, arrivals = 0.0, []
    while t < seconds:
        rate = rates[int(t // phase_s) % len(rates)]
        t += rng.exponential(1 / rate)
        arrivals.append(t)
    n = len(arrivals)
    p_len = rng.integers(*prompt, n)
    c_len = np.where(rng.random(n) < cached_share, (rng.random(n) * p_len * 0.8).astype(int), 0)
    out = rng.integers(*output, n)
    recs, lane_free, clock = [], 0.0, 0.0
    decoding: dict[int, int] = {}          # request -> tokens still to generate
    ready: list[tuple[float, int]] = []    # (first token time, request) waiting to join the decode batch
    first, end = {}, {}
    pending = list(range(n))
    while pending or decoding or ready:
        while pending and (not decoding and not ready or arrivals[pending[0]] <= clock):
            i = pending.pop(0)
            start = max(arrivals[i], lane_free)
            computed, cached = p_len[i] - c_len[i], c_len[i]
            lane_free = start + OVERHEAD_S + computed / profile.prefill_tps + cached / profile.cached_prefill_tps
            first[i] = lane_free
            ready.append((lane_free, i))
        if not decoding and ready:
            clock = max(clock, min(r[0] for r in ready))
        for f, i in list(ready):
            if f <= clock:
                ready.remove((f, i))
                if out[i] > 1:
                    decoding[i] = out[i] - 1
                else:
                    end[i] = f
        if not decoding:
            continue
        clock += profile.step_s(len(decoding))
        for i in list(decoding):
            decoding[i] -= 1
            if decoding[i] == 0:
                del decoding[i]
                end[i] = clock
    for i in range(n):
        jitter = (lambda: 1 + rng.uniform(-noise, noise)) if noise else (lambda: 1.0)
        sent = arrivals[i]
        f = sent + (first[i] - sent) * jitter()
        e = f + (end[i] - first[i]) * jitter()
        recs.append({"i": i, "arrival_s": sent, "sent_s": sent, "first_token_s": f, "end_s": e,
                     "ttft_s": f - sent, "tpot_s": (e - f) / (out[i] - 1) if out[i] > 1 else None,
                     "prompt_tokens": int(p_len[i]), "cached_prompt_tokens_hint": int(c_len[i]),
                     "cached_prompt_tokens": int(c_len[i]), "completion_tokens": int(out[i]),
                     "max_tokens": int(out[i]), "outcome": "ok", "error": None})
    return recs


def test_recovers_a_known_profile():
    profile, report = fit_profile(engine_records(), max_batch=16, kv_tokens=200_000)
    assert profile.prefill_tps == pytest.approx(TRUE.prefill_tps, rel=0.02)
    assert profile.cached_prefill_tps == pytest.approx(TRUE.cached_prefill_tps, rel=0.05)
    assert report["prefill"]["cached_source"] == "fit"
    assert report["prefill"]["intercept_s"] == pytest.approx(OVERHEAD_S, abs=0.005)
    assert profile.ttft_overhead_s == pytest.approx(report["prefill"]["intercept_s"])   # the model adds it to TTFT
    assert profile.step_base_s == pytest.approx(TRUE.step_base_s, rel=0.05)
    assert profile.step_per_seq_s == pytest.approx(TRUE.step_per_seq_s, rel=0.05)
    assert (profile.max_batch, profile.kv_tokens) == (16, 200_000)
    assert report["prefill"]["points"] >= 20 and report["decode"]["points"] >= 100
    assert report["decode"]["concurrency_max"] > 3 * report["decode"]["concurrency_min"]


def test_measurement_noise_of_a_few_percent_costs_a_few_percent():
    profile, report = fit_profile(engine_records(noise=0.03, seed=1), max_batch=16, kv_tokens=200_000)
    assert profile.prefill_tps == pytest.approx(TRUE.prefill_tps, rel=0.03)
    assert profile.step_base_s == pytest.approx(TRUE.step_base_s, rel=0.05)
    assert profile.step_per_seq_s == pytest.approx(TRUE.step_per_seq_s, rel=0.05)
    assert 0 < report["decode"]["relative_rms"] < 0.1 and report["prefill"]["r2"] > 0.95


def test_a_stalled_machine_does_not_decide_the_fit():
    recs = engine_records(seed=2)
    rng = np.random.default_rng(5)
    hit = rng.choice(len(recs), len(recs) // 20, replace=False)
    for k in hit:              # 5% of requests caught in a stall: TTFT and decode x 5 (a busy CI machine)
        r = recs[k]
        ttft, span = r["first_token_s"] - r["sent_s"], r["end_s"] - r["first_token_s"]
        r["first_token_s"] = r["sent_s"] + 5 * ttft
        r["end_s"] = r["first_token_s"] + 5 * span
    profile, report = fit_profile(recs, max_batch=16, kv_tokens=1000)
    assert profile.prefill_tps == pytest.approx(TRUE.prefill_tps, rel=0.05)
    assert profile.step_base_s == pytest.approx(TRUE.step_base_s, rel=0.05)
    # the stalled requests still count as load for their stretched lifetimes, so b is overstated near them
    assert profile.step_per_seq_s == pytest.approx(TRUE.step_per_seq_s, rel=0.2)
    assert report["decode"]["outliers_dropped"] >= len(hit) // 2 and isinstance(
        report["decode"]["outliers_dropped"], int
    )


def test_without_cache_data_the_cached_rate_is_the_planners_ratio():
    from moe_operator.planning.capacity import CACHED_TOKEN_COST

    assert DEFAULT_CACHED_TOKEN_COST == CACHED_TOKEN_COST       # calibrate.py keeps a numpy-only copy
    profile, report = fit_profile(engine_records(cached_share=0.0), max_batch=16, kv_tokens=1000)
    assert report["prefill"]["cached_source"] == "default"
    assert profile.prefill_tps == pytest.approx(TRUE.prefill_tps, rel=0.02)
    assert profile.cached_prefill_tps == pytest.approx(profile.prefill_tps / CACHED_TOKEN_COST)


def test_server_reported_cache_hits_win_over_the_trace_hint():
    recs = engine_records()
    for r in recs:
        r["cached_prompt_tokens_hint"] = 0     # a trace that knew nothing; the server reported the real hits
    profile, report = fit_profile(recs, max_batch=16, kv_tokens=1000)
    assert report["prefill"]["cached_source"] == "fit"
    assert profile.cached_prefill_tps == pytest.approx(TRUE.cached_prefill_tps, rel=0.05)


def test_failed_requests_count_as_load_but_not_as_points():
    recs = engine_records()
    _, clean = fit_profile(recs, max_batch=16, kv_tokens=1000)
    alone = next(r for r in recs if not any(o is not r and o["sent_s"] < r["first_token_s"] and o["end_s"] > r["sent_s"]
                                            for o in recs))                                  # an idle prefill
    recs.append({**alone, "i": len(recs), "outcome": "timeout", "tpot_s": None})           # a failed twin beside it
    profile, report = fit_profile(recs, max_batch=16, kv_tokens=1000)
    assert report["ok"] == len(recs) - 1
    assert report["prefill"]["points"] == clean["prefill"]["points"] - 1    # the twin made it not alone
    assert profile.prefill_tps == pytest.approx(TRUE.prefill_tps, rel=0.02)


def sequential_records(n: int = 60, seed: int = 0) -> list[dict]:
    """One request at a time, each sent 1 s after the previous ended: b = 1 throughout."""
    rng = np.random.default_rng(seed)
    recs, t = [], 0.0
    for i in range(n):
        p, out = int(rng.integers(50, 1000)), int(rng.integers(20, 100))
        f = t + OVERHEAD_S + p / TRUE.prefill_tps
        e = f + (out - 1) * TRUE.step_s(1) * (1 + rng.uniform(-0.02, 0.02))
        recs.append({"i": i, "arrival_s": t, "sent_s": t, "first_token_s": f, "end_s": e, "prompt_tokens": p,
                     "cached_prompt_tokens_hint": 0, "cached_prompt_tokens": 0, "completion_tokens": out,
                     "max_tokens": out, "outcome": "ok", "error": None})
        t = e + 1.0
    return recs


def test_one_concurrency_cannot_separate_the_step_parts():
    recs = sequential_records()
    with pytest.raises(UserError, match="same concurrency"):
        fit_profile(recs, max_batch=16, kv_tokens=1000)


def test_one_prompt_length_cannot_give_a_prefill_rate():
    recs = engine_records(prompt=(500, 501), cached_share=0.0)
    with pytest.raises(UserError, match="prompts of different lengths"):
        fit_profile(recs, max_batch=16, kv_tokens=1000)


def test_too_few_idle_arrivals_or_no_success_is_refused():
    busy = engine_records(rates=(1.0,), seconds=120)               # never idle after the first arrivals
    with pytest.raises(UserError, match="reached an idle replica"):
        fit_profile(busy[3:], max_batch=16, kv_tokens=1000)
    failed = [{**r, "outcome": "error"} for r in engine_records(seconds=60)]
    with pytest.raises(UserError, match="no successful request"):
        fit_profile(failed, max_batch=16, kv_tokens=1000)
    with pytest.raises(UserError, match=">= 1"):
        fit_profile(engine_records(seconds=60), max_batch=0, kv_tokens=1000)


def test_tpot_falling_with_concurrency_is_refused():
    from moe_operator.autoscaling.simulate import calibrate as cal

    recs = engine_records()
    first = np.array([r["first_token_s"] for r in recs])
    end = np.array([r["end_s"] for r in recs])
    b = cal._overlap(first, end, first, end).sum(axis=1) / (end - first)
    assert b.max() - b.min() > 2
    for r, bi in zip(recs, b):   # same intervals, token counts such that TPOT = 0.06 - 0.004 x b: no real engine
        r["completion_tokens"] = int(round((r["end_s"] - r["first_token_s"]) / (0.06 - 0.004 * min(bi, 12)))) + 1
    with pytest.raises(UserError, match="TPOT falls"):
        fit_profile(recs, max_batch=16, kv_tokens=1000)


# --- the CLI: moectl simulate --calibrate [POOL=]FILE

SPEC = Path(__file__).resolve().parents[2] / "bench" / "autoscale_two_pool.yaml"   # pools h800, ascend


def small_trace_file(d: Path) -> Path:
    f = d / "small.jsonl"
    f.write_text("".join(json.dumps({"timestamp": i * 500, "input_length": 2000, "output_length": 100,
                                     "hash_ids": [0, i + 1]}) + "\n" for i in range(240)))
    return f

def _replay_file(tmp_path, recs, name="replay.json", replicas=1):
    f = tmp_path / name
    f.write_text(json.dumps({"version": 1, "endpoint": {"replicas": replicas}, "requests": recs}))
    return f


def test_cli_fits_every_pool_or_one_and_reports_it(tmp_path, capsys):
    from moe_operator.cli.main import main

    trace = small_trace_file(tmp_path)
    f = _replay_file(tmp_path, engine_records())
    assert main(["simulate", "--trace", str(trace), "--spec", str(SPEC), "--policy", "ours", "--json",
                 "--calibrate", str(f)]) == 0
    doc = json.loads(capsys.readouterr().out)
    cal = doc["calibration"]
    assert set(cal) == {"h800", "ascend"}
    for c in cal.values():
        assert c["profile"]["prefill_tps"] == pytest.approx(TRUE.prefill_tps, rel=0.02)
        assert c["profile"]["max_batch"] == 32 and c["profile"]["kv_tokens"] == 32 * 131072
        assert c["fit"]["decode"]["points"] > 100 and isinstance(c["appliedToSimulation"], bool)
    assert main(["simulate", "--trace", str(trace), "--spec", str(SPEC), "--policy", "ours",
                 "--calibrate", f"ascend={f}"]) == 0
    out = capsys.readouterr().out
    assert "calibrated ascend" in out and "calibrated h800" not in out and "prefill 2000.0 tok/s" in out


@pytest.mark.parametrize("make,match", [
    (lambda d: d / "missing.json", "cannot read"),
    (lambda d: (d / "bad.json").write_text("{") and d / "bad.json", "is not JSON"),
    (lambda d: (d / "x.json").write_text('{"a": 1}') and d / "x.json", "no requests list"),
    (lambda d: _replay_file(d, sequential_records(), "seq.json"), "same concurrency"),
    (lambda d: f"nopool={d}/r.json", "no pool 'nopool'"),
])
def test_cli_bad_calibration_is_one_error_line(tmp_path, capsys, make, match):
    from moe_operator.cli.main import main

    trace = small_trace_file(tmp_path)
    rc = main(
        ["simulate", "--trace", str(trace), "--spec", str(SPEC), "--policy", "ours", "--calibrate", str(make(tmp_path))]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: --calibrate") and match in err[0]


def test_a_hand_edited_non_number_is_a_user_error_not_a_traceback():
    """calibrate reads a replay JSON a person may have edited: a string where a time belongs gets one sentence."""
    records = [{"outcome": "ok", "sent_s": "abc", "first_token_s": 1.0, "end_s": 2.0, "prompt_tokens": 10,
                "completion_tokens": 5, "cached_prompt_tokens": 0}] * 4
    with pytest.raises(UserError, match="sent_s"):
        fit_profile(records, max_batch=8, kv_tokens=1000)
