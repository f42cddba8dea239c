"""`moectl rebalance` end to end through the real entry point, with files on disk."""
from __future__ import annotations

import json

import pytest

from moe_operator.cli.main import main

LOADS = {"layers": [[900, 10, 10, 10, 300, 10, 10, 10], [10, 10, 500, 10, 10, 10, 700, 10]]}


@pytest.fixture
def loads_file(tmp_path):
    path = tmp_path / "loads.json"
    path.write_text(json.dumps(LOADS))
    return str(path)


def run(capsys, *argv):
    code = main(["rebalance", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_summary_shows_before_and_after(capsys, loads_file):
    code, out, err = run(capsys, "--loads", loads_file, "--devices", "2xcpu@1,2xcpu@0.5", "--redundant", "4")
    assert code == 0, err
    assert "2 layers x 8 experts, 12 slots on 4 devices (4 redundant" in out
    assert "round-robin" in out and "balanced" in out
    row = next(line for line in out.splitlines() if line.startswith("max device time"))
    before, after = (float(x) for x in row.split()[-2:])
    assert after < before


def test_json_output_and_placement_file(capsys, loads_file, tmp_path):
    target = tmp_path / "placement.json"
    code, out, err = run(capsys, "--loads", loads_file, "--devices", "4xcpu:3", "--redundant", "4", "--json",
                         "--output", str(target))
    assert code == 0, err
    doc = json.loads(out)
    assert doc["after"]["maxDeviceTime"] < doc["before"]["maxDeviceTime"]
    assert doc["after"]["maxDeviceTime"] >= doc["lowerBound"] * (1 - 1e-9)
    placement = json.loads(target.read_text())
    assert placement == doc["placement"]
    assert placement["numLayers"] == 2 and placement["numExperts"] == 8
    assert [s["name"] for s in placement["shards"]] == ["cpu-0", "cpu-1", "cpu-2", "cpu-3"]
    for layer in placement["layers"]:
        assert sorted({e for held in layer for e in held}) == list(range(8))
        assert sum(map(len, layer)) == 12 and all(len(held) <= 3 for held in layer)


def test_catalog_names_give_relative_speeds(capsys, loads_file):
    code, out, err = run(capsys, "--loads", loads_file, "--devices", "2xH800,2x910B", "--redundant", "2", "--json")
    assert code == 0, err
    assert [s["name"] for s in json.loads(out)["placement"]["shards"]] == ["h800-0", "h800-1", "910b-0", "910b-1"]


def test_devices_file_with_nodes_and_groups(capsys, loads_file, tmp_path):
    devices = tmp_path / "devices.json"
    devices.write_text(json.dumps([
        {"name": "a0", "speed": 1.0, "slots": 4, "node": "a"}, {"name": "a1", "speed": 1.0, "slots": 4, "node": "a"},
        {"name": "b0", "speed": 0.5, "slots": 4, "node": "b"}, {"name": "b1", "speed": 0.5, "slots": 4, "node": "b"},
    ]))
    code, out, err = run(capsys, "--loads", loads_file, "--devices", str(devices), "--redundant", "4",
                         "--groups", "2", "--json")
    assert code == 0, err
    for layer in json.loads(out)["placement"]["layers"]:
        node_a = {e for held in layer[:2] for e in held}
        node_b = {e for held in layer[2:] for e in held}
        assert node_a.isdisjoint(node_b)
        assert node_a in ({0, 1, 2, 3}, {4, 5, 6, 7})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--devices", "4xcpu", "--redundant", "2", "--loads", "/nonexistent/loads.json"], "cannot read loads file"),
        (["--devices", "4xwarp-drive", "--redundant", "2"], "not in the catalog"),
        (["--devices", "four cpus", "--redundant", "2"], "is not COUNTxNAME"),
        (["--devices", "2xcpu@1:3", "--redundant", "2"], "need 10 slots"),
        (["--devices", "2xcpu@0", "--redundant", "0"], "speeds must be finite numbers > 0"),
        (["--devices", "4xcpu", "--redundant", "-1"], "--redundant must be >= 0"),
        (["--devices", "4xcpu", "--redundant", "0", "--groups", "3"], "cannot be split into 3 equal groups"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(capsys, loads_file, argv, message):
    if "--loads" not in argv:
        argv = ["--loads", loads_file, *argv]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not JSON"),
    ('{"experts": [1, 2]}', '"layers"'),
    ('{"layers": [[1, "x"]]}', "loads must be numbers"),
    ('{"layers": [[1, 2], [3]]}', "every layer must list 2 experts"),
])
def test_bad_loads_file(capsys, tmp_path, content, message):
    path = tmp_path / "loads.json"
    path.write_text(content)
    code, out, err = run(capsys, "--loads", str(path), "--devices", "2xcpu", "--redundant", "0")
    assert code == 2 and message in err and err.startswith("error: ")
