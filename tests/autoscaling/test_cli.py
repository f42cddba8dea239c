"""moectl simulate / moectl cost: JSON shape, plots, one `error:` line and exit 2 on bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from moe_operator.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "bench" / "autoscale_two_pool.yaml"


@pytest.fixture
def small_trace(tmp_path):
    f = tmp_path / "small.jsonl"
    lines = [
        json.dumps(
            {"timestamp": i * 250, "input_length": 2000, "output_length": 100, "hash_ids": [0, i + 1, i + 2, i + 3]}
        )
        for i in range(1200)
    ]
    f.write_text("\n".join(lines) + "\n")
    return f


def test_simulate_json_and_plot(small_trace, tmp_path, capsys):
    png = tmp_path / "out.png"
    rc = main(
        [
            "simulate",
            "--trace",
            str(small_trace),
            "--spec",
            str(SPEC),
            "--policy",
            "ours,optimum,hpa",
            "--json",
            "--plot",
            str(png),
        ]
    )
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == 1 and doc["trace"]["requests"] == 1200
    assert set(doc["policies"]) == {"ours", "optimum", "hpa"}
    for r in doc["policies"].values():
        assert set(r) >= {"totalCost", "costPerMillionTokens", "sloAttainment", "scaleActions", "unmetDemandTokens"}
        assert 0 <= r["sloAttainment"] <= 1 and r["totalCost"] > 0
    assert doc["optimum"]["lpLowerBound"] <= doc["optimum"]["milpCost"]
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "moe_operator.cli.main", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("args,needle", [
    (["simulate", "--trace", "/nonexistent.csv", "--spec", str(SPEC)], "does not exist"),
    (["simulate", "--trace", "{trace}", "--spec", "{badspec}"], "badspec"),
    (["simulate", "--trace", "{badtrace}", "--spec", str(SPEC)], "expected JSON"),
    (["simulate", "--trace", "{trace}", "--spec", str(SPEC), "--policy", "magic"], "unknown --policy"),
    (["simulate", "--trace", "{trace}", "--spec", str(SPEC), "--speedup", "0"], "--speedup"),
    (["cost", "-f", str(SPEC), "--monthly-tokens", "0"], "--monthly-tokens"),
    (["cost", "-f", str(SPEC), "--monthly-tokens", "1e9", "--utilization", "2"], "--utilization"),
    (["cost", "-f", "{badspec}", "--monthly-tokens", "1e9"], "badspec"),
])
def test_bad_input_one_error_line_exit_2(tmp_path, small_trace, args, needle, capsys):
    bad_spec = tmp_path / "badspec.yaml"
    bad_spec.write_text(
        "apiVersion: serving.moe-operator.io/v1alpha1\nkind: MoEDeployment\nmetadata: {name: x}\nspec: {pools: []}\n"
    )
    bad_trace = tmp_path / "bad.jsonl"
    bad_trace.write_text('{"timestamp": "soon"}\n')
    args = [a.format(trace=small_trace, badspec=bad_spec, badtrace=bad_trace) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_entry_point_exit_code(tmp_path):
    p = run_cli("simulate", "--trace", str(tmp_path / "missing.jsonl"), "--spec", str(SPEC))
    assert p.returncode == 2 and p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1


def test_cost_json_break_even():
    p = run_cli("cost", "-f", str(SPEC), "--monthly-tokens", "3e10", "--cache-hit-ratio", "0.5", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    apis = {r["api"]: r for r in doc["apis"]}
    assert {"deepseek-chat", "deepseek-reasoner", "gpt-4o", "gpt-4o-mini", "claude-3.5-sonnet", "claude-3.5-haiku",
            "gemini-2.0-flash"} <= set(apis)
    sh = doc["selfHosted"]
    assert sh["costPerMillion"] == pytest.approx(sh["monthlyCost"] / 3e4, rel=1e-3)
    for r in apis.values():   # break-even: self-hosting wins exactly above it
        be = r["breakEvenMonthlyTokens"]
        if be is None:
            assert sh["marginalCostPerMillion"] > r["pricePerMillion"]
        else:
            assert r["selfHostedWins"] == (3e10 >= be * 0.999)
    assert apis["gpt-4o"]["breakEvenMonthlyTokens"] < apis["gpt-4o-mini"]["breakEvenMonthlyTokens"]


def test_calibrate_with_the_fluid_model_is_one_error_line(tmp_path, capsys):
    """--calibrate fits the per-replica model; with --model fluid it would be silently ignored, so it is refused."""
    from moe_operator.cli.main import main

    rc = main(
        [
            "simulate",
            "--trace",
            str(ROOT.parent / "shared" / "traces" / "azure_llm_code_2023.csv"),
            "--spec",
            str(SPEC),
            "--model",
            "fluid",
            "--calibrate",
            str(tmp_path / "any.json"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--model replica" in err[0], err
