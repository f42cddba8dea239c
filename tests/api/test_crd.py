"""The CRD is generated from the models, small, structural, documented, and never stale."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from moe_operator.api import MoEDeploymentSpec
from moe_operator.api.crd import build_crd
from moe_operator.api.generate import generated_files, main as generate_main

ROOT = Path(__file__).resolve().parents[2]


def walk(node, path="spec"):
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")


def test_generated_files_are_fresh():
    assert generate_main(["--root", str(ROOT), "--check"]) == 0, "run: python -m moe_operator.api.generate"


def test_check_detects_stale_file(tmp_path):
    assert generate_main(["--root", str(tmp_path), "--check"]) == 1
    assert generate_main(["--root", str(tmp_path)]) == 0
    assert generate_main(["--root", str(tmp_path), "--check"]) == 0


def test_crd_is_small_for_client_side_apply():
    text = generated_files()["crds/serving.moe-operator.io_moedeployments.yaml"]
    # kubectl's last-applied annotation caps at 256 KiB; stay far below it.
    assert len(text.encode()) < 64 * 1024


@pytest.mark.parametrize("part", ["spec", "status"])
def test_every_field_is_described_and_structural(part):
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][part]
    for path, node in walk(schema, part):
        assert node.get("description"), f"{path} has no description"
        assert "$ref" not in node and "anyOf" not in node, f"{path} is not structural"
        assert "type" in node, f"{path} has no type"


def test_cel_rules_match_python_rules():
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    messages = [r["message"] for r in spec["x-kubernetes-validations"]]
    assert messages == [r.message for r in MoEDeploymentSpec.RULES]
    pool = spec["properties"]["pools"]["items"]
    assert any("minReplicas <= self.maxReplicas" in r["rule"] for r in pool["x-kubernetes-validations"])


def test_nested_defaults_apply_when_object_missing():
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["autoscaling"]["default"] == {}
    assert "default" not in spec["properties"]["model"], "a required object must not default to {}"


def test_printer_columns_and_status_subresource():
    version = build_crd()["spec"]["versions"][0]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names[:3] == ["Ready", "Replicas", "Tokens/s"] and "$/1M" in names and "Budget" in names and "Age" in names
    assert version["subresources"] == {"status": {}}


def test_committed_crd_parses():
    docs = list(yaml.safe_load_all((ROOT / "crds/serving.moe-operator.io_moedeployments.yaml").read_text()))
    assert docs[0]["metadata"]["name"] == "moedeployments.serving.moe-operator.io"
