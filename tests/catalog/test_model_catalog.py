"""The shipped model catalog against the model cards, Hugging Face id matching, and the ConfigMap's ``models`` key."""
from __future__ import annotations

import re

import pytest
import yaml

from moe_operator.catalog import Catalog
from moe_operator.errors import SpecInvalid, UserError
from moe_operator.planning.model import model_facts

# (total, active) parameters in billions as each model card publishes them. DeepSeek counts activated parameters
# without the input embedding (a row lookup, no matmul; V2: 21.4B with it, 20.9B without, card 21B; V3: 37.6B / 36.6B,
# card 37B); Mistral and Qwen count it (Qwen3-30B-A3B: 3.35B with it, 3.04B without, card 3.3B).
CARDS = {
    "deepseek-v3": (671, 37, "deepseek"),
    "deepseek-r1": (671, 37, "deepseek"),
    "deepseek-v2": (236, 21, "deepseek"),
    "deepseek-v2-lite": (15.7, 2.4, "deepseek"),
    "mixtral-8x7b": (46.7, 12.9, "with-embedding"),
    "mixtral-8x22b": (141, 39, "with-embedding"),
    "qwen3-30b-a3b": (30.5, 3.3, "with-embedding"),
    "qwen3-235b-a22b": (235, 22, "with-embedding"),
    "qwen2-57b-a14b": (57.4, 14, "with-embedding"),
}
# The cards give two significant figures; DeepSeek-V2-Lite's "2.4B" is 2.45B cut off (2.2% off), the rest are within 2%.
ACTIVE_TOLERANCE = {"deepseek-v2-lite": 0.025}


@pytest.fixture(scope="module")
def models():
    return Catalog.default().models


def test_the_issue_s_models_are_all_there(models):
    assert set(CARDS) <= set(models.keys())


@pytest.mark.parametrize("name", sorted(CARDS))
def test_parameter_counts_match_the_model_card(models, name):
    total_b, active_b, convention = CARDS[name]
    f = model_facts(models.get(name).config)
    active = f.active_params - (f.vocab_size * f.hidden_size if convention == "deepseek" else 0)
    assert f.total_params / 1e9 == pytest.approx(total_b, rel=0.02), name
    assert active / 1e9 == pytest.approx(active_b, rel=ACTIVE_TOLERANCE.get(name, 0.02)), name


def test_every_entry_is_dated_sourced_and_plans(models):
    for name in models.keys():
        entry = models.get(name)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", entry.copied_on), name
        assert entry.config_source.startswith("https://huggingface.co/"), name
        assert entry.hugging_face and all(i.count("/") == 1 for i in entry.hugging_face), name
        assert model_facts(entry.config).architecture == entry.architecture


def test_r1_has_v3_s_shape(models):
    assert models.get("deepseek-r1").config == models.get("deepseek-v3").config


@pytest.mark.parametrize("source, name", [
    ("hf://deepseek-ai/DeepSeek-V3", "deepseek-v3"),
    ("hf://deepseek-ai/deepseek-v3/", "deepseek-v3"),       # Hugging Face ids are case-insensitive
    ("hf://deepseek-ai/DeepSeek-R1-0528", "deepseek-r1"),
    ("hf://mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),
    ("hf://Qwen/Qwen2-57B-A14B-Instruct", "qwen2-57b-a14b"),
])
def test_hf_sources_match_their_entry(models, source, name):
    assert models.for_source(source).key == name


def test_other_schemes_match_nothing(models):
    assert models.for_source("pvc://models/deepseek-v3") is None
    assert models.for_source("builtin://tiny-moe") is None


@pytest.mark.parametrize("source, nearest", [
    ("hf://deepseek-ai/DeepSeek-V4-typo", "deepseek-v3"),
    ("hf://mistralai/Mixtral-8x7b-v0.2", "mixtral-8x7b"),
    ("hf://Qwen/Qwen3-235B-A22", "qwen3-235b-a22b"),
])
def test_unknown_hf_id_names_the_nearest_entries(models, source, nearest):
    with pytest.raises(SpecInvalid) as exc:
        models.for_source(source)
    assert exc.value.reason == "UnknownModel"
    text = str(exc.value)
    assert source in text and "catalogName" in text and "spec.model.config" in text
    named = text.split("nearest: ")[1].split(". Set ")[0]
    assert nearest in [part.split(" (")[0] for part in named.split("), ")], text


def test_unknown_catalog_name_names_the_nearest(models):
    with pytest.raises(SpecInvalid) as exc:
        models.get("deepseek-v33")
    assert exc.value.reason == "UnknownModel" and "nearest: deepseek-v3" in str(exc.value)


EXTRA = {
    "my-moe": {
        "huggingFace": ["acme/My-MoE"], "weightsDtype": "bf16", "configSource": "https://huggingface.co/acme/My-MoE",
        "copiedOn": "2026-11-30",
        "config": {"model_type": "mixtral", "hidden_size": 1024, "intermediate_size": 2048, "num_hidden_layers": 4,
                   "num_attention_heads": 8, "num_key_value_heads": 8, "num_local_experts": 4,
                   "num_experts_per_tok": 2, "vocab_size": 1000},
    },
}


def test_configmap_adds_and_changes_models():
    catalog = Catalog.default().with_overrides({"data": {
        "models": yaml.safe_dump({**EXTRA, "mixtral-8x7b": {"copiedOn": "2026-12-01"}}),
        "prices": "nvidia-h100: 2.5",
    }})
    assert catalog.models.for_source("hf://acme/my-moe").key == "my-moe"
    assert catalog.models.get("mixtral-8x7b").copied_on == "2026-12-01"
    assert catalog.models.get("mixtral-8x7b").config == Catalog.default().models.get("mixtral-8x7b").config
    assert catalog.get("nvidia-h100").price_per_device_hour == 2.5
    assert "my-moe" not in Catalog.default().models  # overrides never leak into the shipped catalog


@pytest.mark.parametrize(
    "raw, says",
    [
        ("[1, 2]", "catalog models must map"),
        ({"x": {"huggingFace": ["a/b"]}}, "catalog model 'x' is invalid"),
        ({"x": {**EXTRA["my-moe"], "huggingFace": ["deepseek-ai/DeepSeek-V3"]}}, "both claim"),
        (
            {"x": {**EXTRA["my-moe"], "config": {"model_type": "mixtral", "hidden_size": 8}}},
            "catalog model 'x' config is not plannable",
        ),
        (
            {"x": {**EXTRA["my-moe"], "config": {**EXTRA["my-moe"]["config"], "num_hidden_layers": 10**8}}},
            "num_hidden_layers",
        ),
        ({"mixtral-8x7b": {"weightsDtype": "fp4"}}, "weightsDtype"),
    ],
)
def test_bad_model_overrides_name_the_model(raw, says):
    with pytest.raises(UserError) as exc:
        Catalog.default().with_overrides({"models": raw})
    assert says in str(exc.value)
