"""``quantization: none`` serves the checkpoint as published: an FP8 checkpoint (DeepSeek-V3/R1 ship their expert
weights in FP8, config.json ``quantization_config.quant_method: fp8``) plans at one byte a weight, as vLLM loads
it, not at bf16 width. The issue-16 acceptance, a spec with only ``source: hf://deepseek-ai/DeepSeek-V3`` and a
16 x H800 pool, plans; the same checkpoint is refused with a sentence where fp8 cannot run."""
from __future__ import annotations

import pytest

import hf_configs
from moe_operator.api import MoEDeploymentSpec
from moe_operator.catalog import Catalog
from moe_operator.errors import SpecInvalid
from moe_operator.planning.plan import plan_deployment

CATALOG = Catalog.default()
FP8 = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}


def _spec(model: dict, pool: dict | None = None, **top) -> MoEDeploymentSpec:
    return MoEDeploymentSpec.model_validate({
        "model": model, **top,
        "pools": [pool or {"name": "h800", "accelerator": "nvidia-h800", "devicesPerReplica": 16}]})


def test_the_hf_id_alone_plans_on_16_h800_at_the_checkpoints_fp8_width():
    plan = plan_deployment(_spec({"source": "hf://deepseek-ai/DeepSeek-V3"}), CATALOG, "ds")
    explicit = plan_deployment(_spec({"source": "hf://deepseek-ai/DeepSeek-V3"}, quantization="fp8"), CATALOG, "ds")
    assert plan.pools[0].fit.fits
    assert plan.pools[0].fit == explicit.pools[0].fit and plan.pools[0].capacity == explicit.pools[0].capacity


def test_an_inline_fp8_config_plans_as_the_catalog_entry():
    inline = {**hf_configs.DEEPSEEK_V3, "quantization_config": FP8}
    a = plan_deployment(_spec({"source": "hf://deepseek-ai/DeepSeek-V3", "config": inline}), CATALOG, "ds")
    b = plan_deployment(_spec({"source": "hf://deepseek-ai/DeepSeek-V3"}), CATALOG, "ds")
    assert a == b


def _on_16_h200(quantization_config=None):
    """DeepSeek-V3's shape with ``quantization_config`` (None: a 16-bit checkpoint), planned on 16 x H200."""
    config = {**hf_configs.DEEPSEEK_V3, **({"quantization_config": quantization_config} if quantization_config else {})}
    h200 = {"name": "h200", "accelerator": "nvidia-h200", "devicesPerReplica": 16}
    return plan_deployment(_spec({"source": "hf://o/m", "config": config}, h200), CATALOG, "ds")


def test_a_bf16_checkpoint_still_plans_at_bf16():
    assert _on_16_h200().pools[0].fit.weights_gib > 1.9 * _on_16_h200(FP8).pools[0].fit.weights_gib


def test_an_fp8_checkpoint_on_ascend_is_refused_naming_the_checkpoint():
    pool = {"name": "npu", "accelerator": "ascend-910b", "devicesPerReplica": 16, "pricePerDeviceHour": 1.0}
    with pytest.raises(SpecInvalid) as exc:
        plan_deployment(_spec({"source": "hf://deepseek-ai/DeepSeek-V3"}, pool), CATALOG, "ds")
    assert exc.value.reason == "QuantizationUnsupported" and "checkpoint" in str(exc.value), str(exc.value)


def test_an_fp8_checkpoint_on_the_torch_engine_is_refused():
    with pytest.raises(SpecInvalid) as exc:
        plan_deployment(_spec({"source": "hf://deepseek-ai/DeepSeek-V3"}, engine="torch"), CATALOG, "ds")
    assert exc.value.reason == "QuantizationUnsupported" and "engine vllm" in str(exc.value), str(exc.value)


@pytest.mark.parametrize("qc", [{"quant_method": "compressed-tensors"}, {"quant_method": "bitsandbytes"}, "junk"])
def test_a_checkpoint_format_planning_does_not_know_is_sized_at_16_bits_as_before(qc):
    """Specs the API server stored before checkpoints were read must keep planning (reviewer: no silent breakage)."""
    assert _on_16_h200(qc).pools[0].fit == _on_16_h200().pools[0].fit


def test_an_explicit_quantization_wins_over_the_checkpoints_as_before():
    a = plan_deployment(_spec({"source": "hf://deepseek-ai/DeepSeek-V3"}, quantization="int4"), CATALOG, "ds")
    b = plan_deployment(
        _spec({"source": "hf://o/m", "config": hf_configs.DEEPSEEK_V3}, quantization="int4"), CATALOG, "ds"
    )
    assert a.pools[0].fit == b.pools[0].fit and a.quantization == "int4"


def test_the_catalogs_weights_dtype_agrees_with_its_config():
    for key in CATALOG.models.keys():
        entry = CATALOG.models.get(key)
        method = (entry.config.get("quantization_config") or {}).get("quant_method")
        assert (entry.weights_dtype == "fp8") == (method == "fp8"), key
