"""Tiny random checkpoints in the published layouts of Mixtral, Qwen3-MoE and DeepSeek-V2/V3 (test data)."""
from __future__ import annotations

import torch

from moe_runtime.checkpoint.writer import save_checkpoint

H, L, E, V = 64, 3, 8, 128


def _w(g, *shape):
    return torch.randn(*shape, generator=g) / shape[-1] ** 0.5


def _attn(t, g, p, nh, nkv, hd, bias=False, qk_norm=False):
    t[f"{p}.self_attn.q_proj.weight"] = _w(g, nh * hd, H)
    t[f"{p}.self_attn.k_proj.weight"] = _w(g, nkv * hd, H)
    t[f"{p}.self_attn.v_proj.weight"] = _w(g, nkv * hd, H)
    t[f"{p}.self_attn.o_proj.weight"] = _w(g, H, nh * hd)
    if qk_norm:
        t[f"{p}.self_attn.q_norm.weight"] = 1 + 0.1 * torch.randn(hd, generator=g)
        t[f"{p}.self_attn.k_norm.weight"] = 1 + 0.1 * torch.randn(hd, generator=g)


def _mlp(t, g, p, inter, names=("gate_proj", "up_proj", "down_proj")):
    t[f"{p}.{names[0]}.weight"] = _w(g, inter, H)
    t[f"{p}.{names[1]}.weight"] = _w(g, inter, H)
    t[f"{p}.{names[2]}.weight"] = _w(g, H, inter)


def _common(t, g):
    t["model.embed_tokens.weight"] = torch.randn(V, H, generator=g)
    t["model.norm.weight"] = torch.ones(H)
    t["lm_head.weight"] = _w(g, V, H)


def mixtral(d, seed=1):
    g = torch.Generator().manual_seed(seed)
    cfg = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": H, "intermediate_size": 96,
           "num_hidden_layers": L, "num_attention_heads": 4, "num_key_value_heads": 2, "num_local_experts": E,
           "num_experts_per_tok": 2, "vocab_size": V, "rms_norm_eps": 1e-5, "rope_theta": 1e6}
    t = {}
    _common(t, g)
    for i in range(L):
        p = f"model.layers.{i}"
        t[f"{p}.input_layernorm.weight"] = torch.ones(H)
        t[f"{p}.post_attention_layernorm.weight"] = torch.ones(H)
        _attn(t, g, p, 4, 2, 16)
        t[f"{p}.block_sparse_moe.gate.weight"] = _w(g, E, H)
        for e in range(E):
            _mlp(t, g, f"{p}.block_sparse_moe.experts.{e}", 96, ("w1", "w3", "w2"))
    return save_checkpoint(d, cfg, t)


def qwen3_moe(d, seed=2):
    g = torch.Generator().manual_seed(seed)
    cfg = {
        "architectures": ["Qwen3MoeForCausalLM"],
        "model_type": "qwen3_moe",
        "hidden_size": H,
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "num_hidden_layers": L,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "num_experts": E,
        "num_experts_per_tok": 2,
        "norm_topk_prob": True,
        "vocab_size": V,
        "mlp_only_layers": [0],
        "decoder_sparse_step": 1,
    }
    t = {}
    _common(t, g)
    for i in range(L):
        p = f"model.layers.{i}"
        t[f"{p}.input_layernorm.weight"] = torch.ones(H)
        t[f"{p}.post_attention_layernorm.weight"] = torch.ones(H)
        _attn(t, g, p, 4, 2, 32, qk_norm=True)
        if i == 0:
            _mlp(t, g, f"{p}.mlp", 128)
            continue
        t[f"{p}.mlp.gate.weight"] = _w(g, E, H)
        for e in range(E):
            _mlp(t, g, f"{p}.mlp.experts.{e}", 32)
    return save_checkpoint(d, cfg, t)


def deepseek(d, v3: bool, seed=3):
    g = torch.Generator().manual_seed(seed)
    nh, nope, rope, vd, rank = 4, 16, 8, 16, 32
    cfg = {"architectures": ["DeepseekV3ForCausalLM" if v3 else "DeepseekV2ForCausalLM"],
           "model_type": "deepseek_v3" if v3 else "deepseek_v2", "hidden_size": H, "intermediate_size": 128,
           "moe_intermediate_size": 32, "num_hidden_layers": L, "num_attention_heads": nh, "num_key_value_heads": nh,
           "n_routed_experts": E, "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
           "moe_layer_freq": 1, "n_group": 4, "topk_group": 2, "routed_scaling_factor": 2.5, "vocab_size": V,
           "q_lora_rank": 24 if v3 else None, "kv_lora_rank": rank, "qk_nope_head_dim": nope, "qk_rope_head_dim": rope,
           "v_head_dim": vd, "scoring_func": "sigmoid" if v3 else "softmax",
           "topk_method": "noaux_tc" if v3 else "group_limited_greedy", "norm_topk_prob": v3}
    t = {}
    _common(t, g)
    for i in range(L):
        p = f"model.layers.{i}"
        t[f"{p}.input_layernorm.weight"] = torch.ones(H)
        t[f"{p}.post_attention_layernorm.weight"] = torch.ones(H)
        a = f"{p}.self_attn"
        if v3:
            t[f"{a}.q_a_proj.weight"] = _w(g, 24, H)
            t[f"{a}.q_a_layernorm.weight"] = torch.ones(24)
            t[f"{a}.q_b_proj.weight"] = _w(g, nh * (nope + rope), 24)
        else:
            t[f"{a}.q_proj.weight"] = _w(g, nh * (nope + rope), H)
        t[f"{a}.kv_a_proj_with_mqa.weight"] = _w(g, rank + rope, H)
        t[f"{a}.kv_a_layernorm.weight"] = torch.ones(rank)
        t[f"{a}.kv_b_proj.weight"] = _w(g, nh * (nope + vd), rank)
        t[f"{a}.o_proj.weight"] = _w(g, H, nh * vd)
        if i == 0:
            _mlp(t, g, f"{p}.mlp", 128)
            continue
        t[f"{p}.mlp.gate.weight"] = _w(g, E, H)
        if v3:
            t[f"{p}.mlp.gate.e_score_correction_bias"] = 0.1 * torch.randn(E, generator=g)
        _mlp(t, g, f"{p}.mlp.shared_experts", 32)
        for e in range(E):
            _mlp(t, g, f"{p}.mlp.experts.{e}", 32)
    return save_checkpoint(d, cfg, t)


BUILDERS = {"mixtral": mixtral, "qwen3_moe": qwen3_moe,
            "deepseek_v2": lambda d: deepseek(d, False), "deepseek_v3": lambda d: deepseek(d, True)}
