"""Decoder building blocks: RMSNorm, RoPE, GQA attention (Qwen3 q/k norm), simplified DeepSeek MLA, SwiGLU MLP.

Attention runs over a *ragged batch*: the projections see all new tokens of all sequences flattened as [N, hidden];
scaled-dot-product attention runs per sequence against that sequence's own KV cache (no padding).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from moe_runtime.quant import make_linear

from .config import MoEConfig
from .kv import SeqKV


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cos_sin(
    positions: torch.Tensor, dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [N, dim] for integer positions [N] (HF's rotate-half layout)."""
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    freqs = positions.float()[:, None] * inv[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """x: [N, heads, dim]. DeepSeek stores rope dims interleaved; they are de-interleaved first, as HF does."""
    if interleaved:
        n, h, d = x.shape
        x = x.view(n, h, d // 2, 2).transpose(-1, -2).reshape(n, h, d)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


@dataclass
class Batch:
    """A ragged batch: per sequence, its slice of the flattened tokens and its KV cache."""

    starts: list[int]  # offset of each sequence's new tokens in the flattened [N] axis
    counts: list[int]  # new tokens per sequence
    kvs: list[SeqKV]
    positions: torch.Tensor  # [N] absolute positions


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q [h, t, d], k [h, T, d], v [h, T, dv] with the t queries at the last t positions. Returns [t, h*dv]."""
    t, big_t = q.shape[1], k.shape[1]
    if t == 1:
        mask = None
    else:
        i = torch.arange(t, device=q.device)[:, None] + (big_t - t)
        mask = torch.arange(big_t, device=q.device)[None, :] <= i
    o = nn.functional.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask, scale=scale)[0]
    return o.transpose(0, 1).reshape(t, -1)


class Attention(nn.Module):
    """Multi-head attention with grouped KV heads, optional q/k/v bias and Qwen3 per-head q/k RMSNorm."""

    def __init__(self, cfg: MoEConfig, layer: int, get, quant: str):
        super().__init__()
        p = f"model.layers.{layer}.self_attn"
        h, hd, nh, nkv = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
        b = cfg.attention_bias
        self.q = make_linear(
            get(f"{p}.q_proj.weight", (nh * hd, h)), get(f"{p}.q_proj.bias", (nh * hd,)) if b else None, quant
        )
        self.k = make_linear(
            get(f"{p}.k_proj.weight", (nkv * hd, h)), get(f"{p}.k_proj.bias", (nkv * hd,)) if b else None, quant
        )
        self.v = make_linear(
            get(f"{p}.v_proj.weight", (nkv * hd, h)), get(f"{p}.v_proj.bias", (nkv * hd,)) if b else None, quant
        )
        self.o = make_linear(get(f"{p}.o_proj.weight", (h, nh * hd)), None, quant)
        self.q_norm = RMSNorm(get(f"{p}.q_norm.weight", (hd,)), cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(get(f"{p}.k_norm.weight", (hd,)), cfg.rms_norm_eps) if cfg.qk_norm else None
        self.layer, self.nh, self.nkv, self.hd, self.theta = layer, nh, nkv, hd, cfg.rope_theta

    def forward(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        n = x.shape[0]
        q = self.q(x).view(n, self.nh, self.hd)
        k = self.k(x).view(n, self.nkv, self.hd)
        v = self.v(x).view(n, self.nkv, self.hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = rope_cos_sin(batch.positions, self.hd, self.theta, x.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        outs = []
        rep = self.nh // self.nkv
        for s, c, kv in zip(batch.starts, batch.counts, batch.kvs):
            ka, va = kv.append(self.layer, k[s:s + c].transpose(0, 1), v[s:s + c].transpose(0, 1))
            if rep > 1:
                ka, va = ka.repeat_interleave(rep, 0), va.repeat_interleave(rep, 0)
            outs.append(_attend(q[s:s + c].transpose(0, 1), ka, va, 1.0 / math.sqrt(self.hd)))
        return self.o(torch.cat(outs, 0))


class MLAttention(nn.Module):
    """DeepSeek multi-head latent attention, simplified: the latent is expanded to per-head K/V before caching
    (the cache holds full K/V, not the compressed latent) and YaRN frequency scaling is not applied (its softmax
    mscale is). Weight names and shapes are DeepSeek's own."""

    def __init__(self, cfg: MoEConfig, layer: int, get, quant: str):
        super().__init__()
        p = f"model.layers.{layer}.self_attn"
        h, nh = cfg.hidden_size, cfg.num_heads
        self.nope, self.rope, self.vd, self.rank = (
            cfg.qk_nope_head_dim,
            cfg.qk_rope_head_dim,
            cfg.v_head_dim,
            cfg.kv_lora_rank,
        )
        qd = self.nope + self.rope
        if cfg.q_lora_rank:
            r = int(cfg.q_lora_rank)
            self.q_a = make_linear(get(f"{p}.q_a_proj.weight", (r, h)), None, quant)
            self.q_a_norm = RMSNorm(get(f"{p}.q_a_layernorm.weight", (r,)), cfg.rms_norm_eps)
            self.q_b = make_linear(get(f"{p}.q_b_proj.weight", (nh * qd, r)), None, quant)
            self.q = None
        else:
            self.q = make_linear(get(f"{p}.q_proj.weight", (nh * qd, h)), None, quant)
        self.kv_a = make_linear(get(f"{p}.kv_a_proj_with_mqa.weight", (self.rank + self.rope, h)), None, quant)
        self.kv_a_norm = RMSNorm(get(f"{p}.kv_a_layernorm.weight", (self.rank,)), cfg.rms_norm_eps)
        self.kv_b = make_linear(get(f"{p}.kv_b_proj.weight", (nh * (self.nope + self.vd), self.rank)), None, quant)
        self.o = make_linear(get(f"{p}.o_proj.weight", (h, nh * self.vd)), None, quant)
        self.layer, self.nh, self.theta = layer, nh, cfg.rope_theta
        self.scale = qd ** -0.5
        rs = cfg.raw.get("rope_scaling") or {}
        if rs.get("mscale_all_dim") and rs.get("factor", 1) > 1:
            m = 0.1 * rs["mscale_all_dim"] * math.log(rs["factor"]) + 1.0
            self.scale *= m * m

    def forward(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        n = x.shape[0]
        q = self.q(x) if self.q is not None else self.q_b(self.q_a_norm(self.q_a(x)))
        q = q.view(n, self.nh, self.nope + self.rope)
        q_nope, q_pe = q[..., :self.nope], q[..., self.nope:]
        ckv = self.kv_a(x)
        c, k_pe = ckv[:, :self.rank], ckv[:, self.rank:].view(n, 1, self.rope)
        kv = self.kv_b(self.kv_a_norm(c)).view(n, self.nh, self.nope + self.vd)
        k_nope, v = kv[..., :self.nope], kv[..., self.nope:]
        cos, sin = rope_cos_sin(batch.positions, self.rope, self.theta, x.dtype)
        q_pe, k_pe = apply_rope(q_pe, cos, sin, True), apply_rope(k_pe, cos, sin, True)
        q = torch.cat([q_nope, q_pe], -1)
        k = torch.cat([k_nope, k_pe.expand(n, self.nh, self.rope)], -1)
        outs = []
        for s, cnt, cache in zip(batch.starts, batch.counts, batch.kvs):
            ka, va = cache.append(self.layer, k[s:s + cnt].transpose(0, 1), v[s:s + cnt].transpose(0, 1).contiguous())
            outs.append(_attend(q[s:s + cnt].transpose(0, 1), ka, va, self.scale))
        return self.o(torch.cat(outs, 0))


class DenseMLP(nn.Module):
    """SwiGLU MLP: dense layers and shared experts (names gate_proj / up_proj / down_proj under ``prefix``)."""

    def __init__(self, prefix: str, hidden: int, inter: int, get, quant: str):
        super().__init__()
        self.gate = make_linear(get(f"{prefix}.gate_proj.weight", (inter, hidden)), None, quant)
        self.up = make_linear(get(f"{prefix}.up_proj.weight", (inter, hidden)), None, quant)
        self.down = make_linear(get(f"{prefix}.down_proj.weight", (hidden, inter)), None, quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))
