"""``moectl plan`` / ``moectl render``: same code path as the operator, one-line errors with exit 2."""
from __future__ import annotations

import json
import subprocess
import sys

import yaml

from moe_operator.cli.main import main

from test_golden import GOLDEN, ROOT


def test_render_prints_the_golden(capsys):
    assert main(["render", "-f", str(ROOT / "examples" / "mixtral-8x7b-ascend.yaml")]) == 0
    assert capsys.readouterr().out == (GOLDEN / "mixtral-8x7b-ascend.yaml").read_text()


def test_plan_json_is_stable_and_complete(capsys):
    assert main(["plan", "-f", str(ROOT / "examples" / "qwen3-moe-mixed.yaml"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["version"] == 1 and out["name"] == "qwen3-moe"
    pools = {p["name"]: p for p in out["pools"]}
    assert set(pools) == {"h100", "ascend"}
    for p in pools.values():
        assert p["fit"]["fits"] is True and p["fit"]["needed_gib"] <= p["fit"]["available_gib"]
        par = p["parallelism"]
        assert par["tensor_parallel"] * par["data_parallel"] == p["devices_per_replica"]
        assert p["placement"]["numExperts"] == 128 and p["capacity"]["decode_tps"] > 0
        assert p["cost"]["price_per_replica_hour"] > 0
    assert pools["ascend"]["cost"]["price_per_device_hour"] == 1.2   # the pool's override


def test_plan_table_names_every_pool(capsys):
    assert main(["plan", "-f", str(ROOT / "examples" / "deepseek-v3-h800.yaml")]) == 0
    out = capsys.readouterr().out
    assert "deepseek-v3" in out and "h800" in out


def _write(tmp_path, doc) -> str:
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(doc))
    return str(p)


def test_unservable_spec_is_one_error_line_and_exit_2(tmp_path, capsys):
    doc = yaml.safe_load((ROOT / "examples" / "deepseek-v3-h800.yaml").read_text())
    doc["spec"]["pools"][0]["devicesPerReplica"] = 2      # 671B in fp8 on 2 x 80 GB
    assert main(["render", "-f", _write(tmp_path, doc)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "h800" in err[0]


def test_missing_file_and_bad_catalog_exit_2(tmp_path, capsys):
    assert main(["plan", "-f", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.startswith("error: cannot read")
    cat = tmp_path / "cat.yaml"
    cat.write_text("data: {colour: blue}\n")
    assert main(["plan", "-f", str(ROOT / "examples" / "tiny-moe.yaml"), "--catalog", str(cat)]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "moe_operator.cli.main", "render", "-f",
                           str(ROOT / "examples" / "tiny-moe.yaml"), "-n", "team-a"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["metadata"]["namespace"] == "team-a"
