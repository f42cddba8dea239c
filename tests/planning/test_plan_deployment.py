"""plan_deployment: the whole plan of a MoEDeployment spec, its JSON, and every SpecInvalid reason it raises."""
from __future__ import annotations

import copy
import json

import pytest

from hf_configs import DEEPSEEK_V3, MIXTRAL_8X7B, QWEN3_30B_A3B
from moe_operator.api import MoEDeploymentSpec
from moe_operator.catalog import Catalog
from moe_operator.errors import SpecInvalid
from moe_operator.planning import plan_deployment, pool_capacity
from moe_operator.planning.fit import memory_fit
from moe_operator.planning.model import model_facts

TINY = {
    "model": {"source": "builtin://tiny-moe", "architecture": "tiny"},
    "engine": "torch",
    "pools": [{"name": "cpu", "accelerator": "cpu", "devicesPerReplica": 1, "minReplicas": 1, "maxReplicas": 2,
               "pricePerDeviceHour": 0.05}],
}
DEEPSEEK = {
    "model": {"source": "pvc://models/deepseek-v3", "config": DEEPSEEK_V3, "maxContextTokens": 8192},
    "engine": "vllm",
    "quantization": "fp8",
    "serving": {"maxBatchSize": 32},
    "pools": [
        {"name": "h800", "accelerator": "nvidia-h800", "devicesPerReplica": 16, "maxReplicas": 4},
        {"name": "h200", "accelerator": "nvidia-h200", "devicesPerReplica": 8, "maxReplicas": 2},
    ],
}
MIXED = {
    "model": {"source": "hf://Qwen/Qwen3-30B-A3B", "config": QWEN3_30B_A3B},
    "engine": "vllm",
    "pools": [
        {"name": "h100", "accelerator": "nvidia-h100", "devicesPerReplica": 2},
        {"name": "ascend", "accelerator": "ascend-910b", "devicesPerReplica": 2, "pricePerDeviceHour": 1.2},
    ],
}


def plan(raw, catalog=None):
    return plan_deployment(MoEDeploymentSpec.model_validate(raw), catalog or Catalog.default(), "test")


def test_tiny_plan_on_cpu():
    p = plan(TINY)
    pool = p.pool("cpu")
    assert p.model.architecture == "tiny"
    assert pool.parallelism.devices == 1 and pool.placement_summary.shards == 1
    assert pool.placement["shards"][0]["device"] == "cpu"
    assert pool.placement["layers"] == [[list(range(8))]]
    assert pool.cost.price_per_replica_hour == 0.05
    assert pool.fit.fits


def test_deepseek_plan_has_every_part():
    p = plan(DEEPSEEK)
    facts = model_facts(DEEPSEEK_V3)
    h800 = p.pool("h800")
    assert h800.fit == memory_fit(facts, "fp8", 8192, 32, 16, 80)
    assert h800.parallelism.expert_parallel == 16
    assert h800.placement["numLayers"] == 58 and h800.placement["numExperts"] == 256
    held = sorted(e for shard in h800.placement["layers"][0] for e in shard)
    assert held == list(range(256))  # every expert exactly once
    assert all(s["rayResources"] == {"GPU": 1.0} and s["device"] == "cuda" for s in h800.placement["shards"])
    assert h800.placement_summary.experts_per_shard == "16"
    assert h800.cost.price_per_replica_hour == pytest.approx(16 * 2.0)
    assert h800.roofline.compute_dtype == "fp8"
    assert p.pool("h200").capacity.decode_tps > 0
    assert (
        pool_capacity(MoEDeploymentSpec.model_validate(DEEPSEEK), "h200", Catalog.default())
        == p.pool("h200").capacity
    )


def test_mixed_fleet_uses_the_pool_price_and_ascend_npu_resources():
    p = plan(MIXED)
    ascend = p.pool("ascend")
    assert ascend.cost.price_per_device_hour == 1.2
    assert ascend.placement["shards"][0] == {"name": "shard-0", "device": "npu", "rayResources": {"NPU": 1.0}}
    assert p.pool("h100").cost.price_per_device_hour == Catalog.default().get("nvidia-h100").price_per_device_hour


def test_json_is_stable_and_round_trips():
    a = plan(DEEPSEEK).model_dump(mode="json")
    b = plan(copy.deepcopy(DEEPSEEK)).model_dump(mode="json")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert set(a) == {
        "version",
        "name",
        "engine",
        "quantization",
        "max_context_tokens",
        "max_batch_size",
        "model",
        "pools",
    }
    assert set(a["pools"][0]) == {
        "name", "accelerator", "vendor", "devices_per_replica", "min_replicas", "max_replicas", "initial_replicas",
        "fit", "parallelism", "placement", "placement_summary", "capacity", "roofline", "cost",
    }
    assert set(a["pools"][0]["capacity"]) == {"prefill_tps", "decode_tps", "cached_prefill_tps", "price_per_hour"}
    assert a["version"] == 1


def _with(raw, path, value):
    out = copy.deepcopy(raw)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


@pytest.mark.parametrize(
    "raw, reason, words",
    [
        (_with(TINY, ["pools", 0, "accelerator"], "nvidia-h20"), "UnknownAccelerator", ["pool 'cpu'", "nvidia-h20"]),
        (_with(MIXED, ["pools", 1, "pricePerDeviceHour"], None), "NoPrice", ["pool 'ascend'", "pricePerDeviceHour"]),
        (_with(DEEPSEEK, ["pools", 0, "devicesPerReplica"], 8), "ModelDoesNotFit",
         ["pool 'h800'", "needs", "640.0 GiB", "devicesPerReplica: 16"]),
        (_with(DEEPSEEK, ["pools", 0, "devicesPerReplica"], 12), "DevicesDoNotDivideExperts",
         ["pool 'h800'", "256 experts", "16"]),
        (_with(TINY, ["engine"], "vllm"), "EngineUnsupported", ["engine torch"]),
        (_with(MIXED, ["quantization"], "fp8"), "QuantizationUnsupported", ["pool 'ascend'", "int8"]),
        (_with(MIXED, ["model", "architecture"], "mixtral"), "ArchitectureMismatch", ["qwen3_moe"]),
        (_with(MIXED, ["model", "config"], {"model_type": "gpt2"}), "UnsupportedModel", ["gpt2"]),
        ({**MIXED, "model": {"source": "hf://x/y", "architecture": "mixtral"}}, "UnknownModel",
         ["hf://x/y", "nearest: ", "catalogName", "spec.model.config"]),
    ],
    ids=["unknown-accelerator", "no-price", "does-not-fit", "devices-do-not-divide", "vllm-on-cpu", "fp8-on-ascend",
         "architecture-mismatch", "unsupported-model", "unknown-hf-model"],
)
def test_unservable_specs_raise_spec_invalid_with_reason(raw, reason, words):
    with pytest.raises(SpecInvalid) as err:
        plan(raw)
    assert err.value.reason == reason
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_catalog_configmap_price_makes_ascend_plannable():
    raw = _with(MIXED, ["pools", 1, "pricePerDeviceHour"], None)
    p = plan(raw, Catalog.default().with_overrides({"data": {"prices": "ascend-910b: 0.8"}}))
    assert p.pool("ascend").cost.price_per_device_hour == 0.8


def test_mixtral_on_one_ascend_lists_each_way_out():
    raw = {
        "model": {"source": "pvc://models/mixtral", "config": MIXTRAL_8X7B},
        "engine": "vllm",
        "pools": [{"name": "ascend", "accelerator": "ascend-910b", "devicesPerReplica": 1, "pricePerDeviceHour": 1.0}],
    }
    facts = model_facts(MIXTRAL_8X7B)
    need = memory_fit(facts, "none", 4096, 16, 1, 64)
    assert 64 < need.needed_gib <= 128  # bf16 needs two 910Bs
    with pytest.raises(SpecInvalid) as err:
        plan(raw)
    msg = str(err.value)
    int4 = memory_fit(facts, "int4", 4096, 16, 1, 64)
    assert f"quantization: int4 ({int4.needed_gib:.1f} GiB)" in msg
    assert "devicesPerReplica: 2 (128 GiB)" in msg
    assert "accelerator: nvidia-h200 (1 x 141 GiB)" in msg  # the only single device with the room
    raw["pools"][0]["devicesPerReplica"] = 2
    assert plan(raw).pool("ascend").fit.fits


def test_pool_capacity_for_the_autoscaler_equals_the_plan():
    spec = MoEDeploymentSpec.model_validate(MIXED)
    catalog = Catalog.default()
    p = plan_deployment(spec, catalog, "x")
    for pool in spec.pools:
        assert pool_capacity(spec, pool, catalog) == p.pool(pool.name).capacity
        assert pool_capacity(spec, pool.name, catalog) == p.pool(pool.name).capacity
    no_price = MoEDeploymentSpec.model_validate(_with(MIXED, ["pools", 1, "pricePerDeviceHour"], None))
    with pytest.raises(SpecInvalid) as err:
        pool_capacity(no_price, "ascend", catalog)
    assert err.value.reason == "NoPrice" and str(err.value).startswith("pool 'ascend': ")
