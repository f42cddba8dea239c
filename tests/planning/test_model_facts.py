"""Model facts from real config.json values: parameter counts against the published figures and a hand count."""
from __future__ import annotations

import pytest

from hf_configs import DEEPSEEK_V2, DEEPSEEK_V3, MIXTRAL_8X7B, QWEN15_MOE_A27B, QWEN3_30B_A3B
from moe_operator.errors import SpecInvalid
from moe_operator.planning.model import TINY_MOE_CONFIG, model_facts


@pytest.mark.parametrize(
    "config, total_b, active_b",
    [
        (MIXTRAL_8X7B, 46.7, 12.9),
        (DEEPSEEK_V3, 671.0, 37.0),
        (QWEN15_MOE_A27B, 14.3, 2.7),
        (QWEN3_30B_A3B, 30.5, 3.3),
        (DEEPSEEK_V2, 236.0, 21.0),
    ],
    ids=["mixtral-8x7b", "deepseek-v3", "qwen1.5-moe-a2.7b", "qwen3-30b-a3b", "deepseek-v2"],
)
def test_params_match_published_figures(config, total_b, active_b):
    f = model_facts(config)
    assert f.total_params / 1e9 == pytest.approx(total_b, rel=0.01)
    # Published active counts are rounded to one significant decimal (37B, 2.7B): 3% tolerance.
    assert f.active_params / 1e9 == pytest.approx(active_b, rel=0.03)


def test_mixtral_hand_count():
    h, inter, layers, vocab, heads, kv, e = 4096, 14336, 32, 32000, 32, 8, 8
    hd = h // heads
    attn = h * heads * hd * 2 + h * kv * hd * 2
    expert = 3 * h * inter
    per_layer_fixed = attn + 2 * h + h * e  # attention, two norms, router
    embed = 2 * vocab * h + h
    f = model_facts(MIXTRAL_8X7B)
    assert f.total_params == layers * (per_layer_fixed + e * expert) + embed
    assert f.active_params == layers * (per_layer_fixed + 2 * expert) + embed
    assert (f.num_experts, f.experts_per_token, f.num_shared_experts, f.num_moe_layers) == (8, 2, 0, 32)
    assert f.kv_bytes_per_token() == layers * 2 * kv * hd * 2  # K and V, bf16
    assert f.attention == "gqa"


def test_qwen2_moe_counts_the_shared_expert_and_biases():
    h, layers, vocab, e = 2048, 24, 151936, 60
    attn = 4 * h * h + 3 * h  # q, k, v, o (16 heads of 128, 16 KV heads) + q/k/v biases
    shared = 3 * h * 5632 + h  # shared expert + its gate
    expert = 3 * h * 1408
    fixed = attn + 2 * h + h * e + shared
    f = model_facts(QWEN15_MOE_A27B)
    assert f.total_params == layers * (fixed + e * expert) + 2 * vocab * h + h
    assert f.active_params == layers * (fixed + 4 * expert) + 2 * vocab * h + h
    assert f.num_shared_experts == 1


def test_qwen3_moe_uses_explicit_head_dim_and_has_no_shared_expert():
    f = model_facts(QWEN3_30B_A3B)
    assert f.head_dim == 128  # not 2048 / 32 = 64
    assert f.num_shared_experts == 0
    assert (f.num_experts, f.experts_per_token) == (128, 8)
    assert f.kv_bytes_per_token() == 48 * 2 * 4 * 128 * 2


def test_deepseek_v3_mla_and_dense_layers():
    f = model_facts(DEEPSEEK_V3)
    assert f.attention == "mla"
    assert f.num_moe_layers == 61 - 3
    assert (f.num_experts, f.num_shared_experts, f.experts_per_token) == (256, 1, 8)
    assert (f.n_group, f.topk_group, f.scoring_func) == (8, 4, "sigmoid")
    # MLA caches the compressed latent (512) plus the shared rope key (64) per layer, not 128 heads x (K + V).
    assert f.kv_bytes_per_token() == 61 * (512 + 64) * 2
    h = 7168
    q = h * 1536 + 1536 + 1536 * 128 * (128 + 64)
    kv = h * (512 + 64) + 512 + 512 * 128 * (128 + 128)
    attn = q + kv + 128 * 128 * h + 2 * h
    expert = 3 * h * 2048
    moe_fixed = h * 256 + 256 + expert  # router + correction bias + shared expert
    embed = 2 * 129280 * h + h
    expected_total = 61 * attn + 3 * 3 * h * 18432 + 58 * (moe_fixed + 256 * expert) + embed
    assert f.total_params == expected_total
    assert f.total_params - f.active_params == 58 * (256 - 8) * expert


def test_moe_layer_selection_by_sparse_step_and_mlp_only_layers():
    cfg = dict(QWEN15_MOE_A27B, decoder_sparse_step=2, mlp_only_layers=[1])
    f = model_facts(cfg)
    # layers i with (i+1) % 2 == 0 -> 1,3,...,23 (12 layers), minus layer 1
    assert f.num_moe_layers == 11
    dense = model_facts(dict(DEEPSEEK_V2, first_k_dense_replace=4, moe_layer_freq=2))
    assert dense.num_moe_layers == len([i for i in range(60) if i >= 4 and i % 2 == 0])


def test_tiny_defaults_and_tiny_with_either_key_set():
    f = model_facts(None, "tiny")
    assert f.architecture == "tiny"
    assert f.num_experts == TINY_MOE_CONFIG["num_experts"]
    assert f.total_params > f.active_params > 0
    mixtral_shaped = {k: v for k, v in MIXTRAL_8X7B.items() if k != "model_type"}
    assert model_facts(mixtral_shaped, "tiny").total_params == model_facts(MIXTRAL_8X7B).total_params


def test_tied_embeddings_count_once():
    tied = model_facts(dict(QWEN3_30B_A3B, tie_word_embeddings=True))
    assert model_facts(QWEN3_30B_A3B).total_params - tied.total_params == 151936 * 2048


@pytest.mark.parametrize(
    "config, arch, reason, words",
    [
        ({"model_type": "llama"}, None, "UnsupportedModel", "llama"),
        (
            {k: v for k, v in MIXTRAL_8X7B.items() if k != "num_local_experts"},
            None,
            "ModelConfigInvalid",
            "num_local_experts",
        ),
        (dict(MIXTRAL_8X7B, hidden_size="4096"), None, "ModelConfigInvalid", "hidden_size"),
        (dict(MIXTRAL_8X7B, num_experts_per_tok=9), None, "ModelConfigInvalid", "9 experts"),
        (None, "deepseek_v3", "ModelConfigMissing", "spec.model.config"),
    ],
)
def test_bad_configs_name_the_problem(config, arch, reason, words):
    with pytest.raises(SpecInvalid) as err:
        model_facts(config, arch)
    assert err.value.reason == reason
    assert words in str(err.value)
