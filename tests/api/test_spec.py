"""Spec validation offline gives the same sentences the API server's CEL rules give."""
from __future__ import annotations

import pytest

from moe_operator.api import MoEDeploymentSpec, load_manifest
from moe_operator.errors import UserError

GOOD = {"model": {"source": "builtin://tiny-moe"}, "engine": "torch", "pools": [{"name": "cpu", "accelerator": "cpu"}]}


def spec(**changes):
    doc = {**GOOD, **changes}
    return MoEDeploymentSpec.model_validate(doc)


def test_defaults_fill_in():
    s = spec()
    assert s.pools[0].initial_replicas == 1
    assert s.autoscaling.target_utilization == 0.7
    assert s.cache.block_tokens == 64


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"pools": [{"name": "a", "accelerator": "cpu", "minReplicas": 3, "maxReplicas": 2}]},
            "minReplicas must not exceed maxReplicas",
        ),
        (
            {"pools": [{"name": "a", "accelerator": "cpu"}, {"name": "a", "accelerator": "cpu"}]},
            "pool names must be unique",
        ),
        ({"quantization": "fp8"}, "use engine vllm for fp8"),
        ({"pools": [{"name": "A_b", "accelerator": "cpu"}]}, "should match pattern"),
        ({"pools": []}, "at least 1 item"),
        ({"model": {"source": "ftp://x"}}, "should match pattern"),
        ({"model": {"source": "s3://b/m"}}, "model needs its planning facts"),
        ({"model": {"source": "pvc://m/x", "architecture": "deepseek_v3"}}, "set spec.model.catalogName"),
        ({"model": {"source": "hf://a/b", "catalogName": "x", "config": {"model_type": "mixtral"}}}, "not both"),
        ({"model": {"source": "hf://a/b", "catalogName": "DeepSeek V3"}}, "should match pattern"),
        ({"autoscaling": {"scaleToZero": {"enabled": True}}}, "scaleToZero needs at least one pool with minReplicas 0"),
        (
            {
                "autoscaling": {
                    "metrics": {"prometheus": {"url": "http://p:9090"}, "scrape": {"url": "http://r/metrics"}}
                }
            },
            "choose one metrics source",
        ),
        ({"autoscaling": {"targetUtilization": 0}}, "greater than 0"),
        ({"engine": "tensorrt"}, "Input should be 'torch' or 'vllm'"),
        (
            {"pools": [{"name": "a", "accelerator": "cpu", "replicas": 5, "maxReplicas": 2}]},
            "replicas must lie between",
        ),
        ({"pools": [{"name": "a", "accelerator": "cpu", "devicesPerReplcia": 2}]}, "Extra inputs are not permitted"),
        ({"autoscaling": {"burstReserveSeconds": -1}}, "greater than or equal to 0"),
        ({"autoscaling": {"burstReserveSeconds": "long"}}, "valid integer"),
        ({"engine": "vllm", "rebalance": {"enabled": True}}, "vLLM"),
    ],
)
def test_bad_specs_are_rejected_with_a_sentence(changes, message):
    with pytest.raises(Exception) as info:
        spec(**changes)
    assert message in str(info.value)


@pytest.mark.parametrize("model", [
    {"source": "hf://deepseek-ai/DeepSeek-V3"},                  # the catalog knows it (or planning says so)
    {"source": "s3://b/m", "catalogName": "deepseek-v3"},
    {"source": "pvc://m/x", "config": {"model_type": "mixtral"}},
    {"source": "/models/tiny", "architecture": "tiny"},
])
def test_a_model_named_any_plannable_way_passes_the_schema(model):
    assert spec(model=model).model.source == model["source"]


def test_load_manifest_errors_name_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: serving.moe-operator.io/v1alpha1\nkind: MoEDeployment\nmetadata: {name: x}\n"
        "spec:\n  model: {source: builtin://tiny-moe}\n  pools: [{name: a, accelerator: cpu, maxReplicas: -1}]\n"
    )
    with pytest.raises(UserError) as info:
        load_manifest(bad)
    text = str(info.value)
    assert str(bad) in text and "spec.pools.0.maxReplicas" in text and "\n" not in text


@pytest.mark.parametrize("content, message", [
    ("", "no MoEDeployment"),
    ("a: [", "not valid YAML"),
    ("apiVersion: v1\nkind: MoEDeployment\nmetadata: {name: x}\nspec: {}\n", "expected apiVersion"),
])
def test_load_manifest_rejects_garbage(tmp_path, content, message):
    f = tmp_path / "m.yaml"
    f.write_text(content)
    with pytest.raises(UserError, match=message):
        load_manifest(f)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        load_manifest(tmp_path / "nope.yaml")


def test_an_empty_toleration_key_with_exists_still_tolerates_everything():
    """Kubernetes' own meaning of key "" + Exists (match every taint): the label-key syntax added for issue 14 item 13
    must not turn stored specs that use it into SpecInvalid."""
    from moe_operator.api.spec import Toleration

    assert Toleration.model_validate({"key": "", "operator": "Exists"}).key == ""
    with pytest.raises(Exception):
        Toleration.model_validate({"key": "k\u00e9y", "operator": "Exists"})
