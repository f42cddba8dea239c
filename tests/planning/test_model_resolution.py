"""spec.model resolves to planning facts in one place: inline config, else the model catalog (by catalogName or hf://
source), else SpecInvalid with a sentence. A model named from the catalog plans exactly as its pasted config.json
does."""

from __future__ import annotations

import pytest

import hf_configs
from moe_operator.api import MoEDeploymentSpec
from moe_operator.catalog import Catalog
from moe_operator.errors import SpecInvalid
from moe_operator.planning.plan import facts_for, plan_deployment

# The independently typed config.json of each catalog entry (tests/planning/hf_configs.py).
INLINE = {
    "deepseek-v3": hf_configs.DEEPSEEK_V3,
    "deepseek-r1": hf_configs.DEEPSEEK_V3,
    "deepseek-v2": hf_configs.DEEPSEEK_V2,
    "deepseek-v2-lite": hf_configs.DEEPSEEK_V2_LITE,
    "mixtral-8x7b": hf_configs.MIXTRAL_8X7B,
    "mixtral-8x22b": hf_configs.MIXTRAL_8X22B,
    "qwen3-30b-a3b": hf_configs.QWEN3_30B_A3B,
    "qwen3-235b-a22b": hf_configs.QWEN3_235B_A22B,
    "qwen2-57b-a14b": hf_configs.QWEN2_57B_A14B,
}
CATALOG = Catalog.default()


def spec(model: dict, quantization: str = "fp8") -> MoEDeploymentSpec:
    return MoEDeploymentSpec.model_validate({
        "model": model, "engine": "vllm", "quantization": quantization,
        "pools": [{"name": "h800", "accelerator": "nvidia-h800", "devicesPerReplica": 16, "maxReplicas": 4}],
    })


def test_every_catalog_entry_has_an_inline_twin():
    assert set(INLINE) == set(CATALOG.models.keys())


@pytest.mark.parametrize("name", sorted(INLINE))
def test_named_model_plans_exactly_as_its_inline_config(name):
    entry = CATALOG.models.get(name)
    inline = plan_deployment(spec({"source": f"hf://{entry.hugging_face[0]}", "config": INLINE[name]}), CATALOG, "m")
    for model in ({"source": f"hf://{entry.hugging_face[0]}"},
                  {"source": f"hf://{entry.hugging_face[-1].upper()}"},
                  {"source": "pvc://models/weights", "catalogName": name}):
        assert plan_deployment(spec(model), CATALOG, "m") == inline, model


def test_deepseek_v3_from_its_name_on_16_h800():
    plan = plan_deployment(spec({"source": "hf://deepseek-ai/DeepSeek-V3"}), CATALOG, "ds")
    assert plan.model.architecture == "deepseek_v3" and plan.model.experts == 256
    assert plan.pools[0].fit.fits and plan.pools[0].parallelism.expert_parallel == 16


def test_inline_config_wins_over_the_catalog():
    f = facts_for(spec({"source": "hf://deepseek-ai/DeepSeek-V3", "config": hf_configs.MIXTRAL_8X7B}), CATALOG)
    assert f.architecture == "mixtral"


def test_architecture_must_agree_with_the_catalog_entry():
    with pytest.raises(SpecInvalid) as exc:
        facts_for(spec({"source": "hf://deepseek-ai/DeepSeek-V3", "architecture": "mixtral"}), CATALOG)
    assert exc.value.reason == "ArchitectureMismatch" and "catalog model deepseek-v3" in str(exc.value)


def test_typo_gets_spec_invalid_naming_the_nearest_entries():
    with pytest.raises(SpecInvalid) as exc:
        plan_deployment(spec({"source": "hf://deepseek-ai/DeepSeek-V4-typo"}), CATALOG, "ds")
    assert exc.value.reason == "UnknownModel"
    assert "deepseek-v3 (deepseek-ai/DeepSeek-V3)" in str(exc.value).split("nearest: ")[1]


def test_unknown_catalog_name_is_spec_invalid():
    with pytest.raises(SpecInvalid) as exc:
        plan_deployment(spec({"source": "s3://b/m", "catalogName": "mixtral-8x7"}), CATALOG, "m")
    assert exc.value.reason == "UnknownModel" and "nearest: mixtral-8x7b" in str(exc.value)


def test_a_model_the_cluster_adds_plans_by_name():
    extra = {"my-moe": {**CATALOG.models.get("mixtral-8x7b").model_dump(by_alias=True, exclude={"key"}),
                        "huggingFace": ["acme/My-MoE"]}}
    catalog = CATALOG.with_overrides({"models": extra})
    plan = plan_deployment(spec({"source": "hf://acme/My-MoE"}), catalog, "m")
    assert plan == plan_deployment(
        spec({"source": "hf://acme/My-MoE", "config": hf_configs.MIXTRAL_8X7B}), catalog, "m"
    )
    with pytest.raises(SpecInvalid):
        plan_deployment(spec({"source": "hf://acme/My-MoE"}), CATALOG, "m")


def test_builtin_tiny_needs_no_catalog_entry():
    s = MoEDeploymentSpec.model_validate({"model": {"source": "builtin://tiny-moe"}, "engine": "torch",
                                          "pools": [{"name": "cpu", "accelerator": "cpu"}]})
    assert facts_for(s, CATALOG).architecture == "tiny"
