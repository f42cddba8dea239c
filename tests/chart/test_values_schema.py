"""values.schema.json accepts the shipped and example values and rejects the mistakes an admin is likely to make.

Helm applies the schema on install/upgrade/template/lint; these checks run the same JSON Schema with the
jsonschema package, so they need no helm binary.
"""
from __future__ import annotations

import copy
import json

import jsonschema
import pytest
import yaml

from chart_tools import CHART, VALUES_DIR

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())


def merged(override: dict) -> dict:
    """Helm's coalescing of maps: the override's keys win, nested maps merge, lists are replaced."""
    def merge(base, top):
        if isinstance(base, dict) and isinstance(top, dict):
            out = dict(base)
            for k, v in top.items():
                out[k] = merge(base.get(k), v) if k in base else v
            return out
        return copy.deepcopy(top)
    return merge(DEFAULTS, override)


def errors(values: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in validator.iter_errors(values)]


def test_schema_is_valid_draft7():
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def test_defaults_satisfy_the_schema():
    assert errors(DEFAULTS) == []


@pytest.mark.parametrize("path", sorted(VALUES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_golden_values_files_satisfy_the_schema(path):
    assert errors(merged(yaml.safe_load(path.read_text()) or {})) == []


@pytest.mark.parametrize("override, where", [
    ({"watchNamespaces": ["Team_A"]}, "watchNamespaces.0"),
    ({"watchNamespaces": ["a", "a"]}, "watchNamespaces"),
    ({"catalog": {"ascendResourceScheme": "volcano"}}, "catalog.ascendResourceScheme"),
    ({"catalog": {"prices": {"nvidia-h800": -1}}}, "catalog.prices.nvidia-h800"),
    ({"catalog": {"prices": {"nvidia-h800": "cheap"}}}, "catalog.prices.nvidia-h800"),
    ({"catalog": {"prices": {"nvidia-h800": "-1.5"}}}, "catalog.prices.nvidia-h800"),
    ({"catalog": {"ascendScheme": "hami"}}, "catalog"),
    ({"prometheusUrl": "prometheus:9090"}, "prometheusUrl"),
    ({"replicaCount": 0}, "replicaCount"),
    ({"image": {"digest": "latest"}}, "image.digest"),
    ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy"),
    ({"securityContext": {"allowPrivilegeEscalation": True}}, "securityContext.allowPrivilegeEscalation"),
    ({"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}, "securityContext.capabilities.drop"),
    (
        {"securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}}},
        "securityContext.capabilities.add",
    ),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "podSecurityContext.runAsNonRoot"),
    ({"runtimeImages": {"torch": {"ascend": "x:1"}}}, "runtimeImages.torch"),
    ({"runtimeImages": {"rayVersion": "latest"}}, "runtimeImages.rayVersion"),
    ({"runtimeImages": {"vllmRayVersion": "2.58"}}, "runtimeImages.vllmRayVersion"),
    ({"monitoring": {"serviceMonitor": {"enabled": True, "interval": "30"}}}, "monitoring.serviceMonitor.interval"),
    ({"resources": {"limits": {"memory": "lots"}}}, "resources.limits.memory"),
    ({"watchNamespace": ["a"]}, ""),
    ({"replicaCount": 2, "peering": {"enabled": False}}, "peering.enabled"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_schema_rejects_bad_values(override, where):
    found = errors(merged(override))
    assert found, f"{override} was accepted"
    assert any(e.split(":")[0] == where for e in found), found


def test_prices_may_be_decimal_strings_as_helm_set_passes_them():
    assert errors(merged({"catalog": {"prices": {"nvidia-h800": "1.85", "cpu": 0.04}}})) == []


def test_one_replica_may_run_without_peering():
    assert errors(merged({"replicaCount": 1, "peering": {"enabled": False}})) == []


def test_runtime_image_defaults_are_the_operators_defaults():
    """values.yaml repeats moe_operator.render.images.Images' defaults so an admin sees them; they must not drift."""
    from dataclasses import asdict

    from moe_operator.render.images import Images

    shown = DEFAULTS["runtimeImages"]
    flat = {"ray_version": shown["rayVersion"], "vllm_ray_version": shown["vllmRayVersion"]}
    for engine in ("torch", "vllm"):
        for vendor, image in shown[engine].items():
            flat[f"{engine}_{vendor}"] = image
    assert flat == asdict(Images())


def test_catalog_price_keys_in_examples_are_catalog_keys():
    from moe_operator.catalog import Catalog

    keys = set(Catalog.default().keys())
    for path in VALUES_DIR.glob("*.yaml"):
        catalog = (yaml.safe_load(path.read_text()) or {}).get("catalog", {})
        assert set(catalog.get("prices", {})) <= keys, path.name
