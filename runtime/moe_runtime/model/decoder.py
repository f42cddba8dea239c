"""MoEForCausalLM: the decoder of Mixtral / Qwen2-MoE / Qwen3-MoE / DeepSeek-V2/V3, built from checkpoint tensors."""
from __future__ import annotations

import torch
from torch import nn

from moe_runtime.quant import make_linear

from .config import MoEConfig
from .kv import SeqKV
from .layers import Attention, Batch, DenseMLP, MLAttention, RMSNorm
from .moe_block import ExpertBackend, MoEBlock


class DecoderLayer(nn.Module):
    def __init__(self, cfg: MoEConfig, layer: int, get, quant: str, backend: ExpertBackend, counts: torch.Tensor):
        super().__init__()
        p = f"model.layers.{layer}"
        h = cfg.hidden_size
        self.in_norm = RMSNorm(get(f"{p}.input_layernorm.weight", (h,)), cfg.rms_norm_eps)
        self.post_norm = RMSNorm(get(f"{p}.post_attention_layernorm.weight", (h,)), cfg.rms_norm_eps)
        self.attn = (MLAttention if cfg.mla else Attention)(cfg, layer, get, quant)
        if layer in cfg.moe_layers:
            self.mlp = MoEBlock(cfg, layer, get, quant, backend, counts)
        else:
            self.mlp = DenseMLP(f"{p}.mlp", h, cfg.intermediate_size, get, quant)

    def forward(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        x = x + self.attn(self.in_norm(x), batch)
        return x + self.mlp(self.post_norm(x))


class MoEForCausalLM(nn.Module):
    """Everything except the routed experts lives here; those run in ``backend`` (local bank or Ray shards).

    ``forward`` takes a ragged batch (new tokens of several sequences, each with its own SeqKV) and returns the
    next-token logits of each sequence [B, vocab] in float32 (or of every new token with ``all_logits``)."""

    def __init__(self, cfg: MoEConfig, reader, backend: ExpertBackend, device: torch.device,
                 dtype: torch.dtype = torch.float32, quant: str = "none"):
        super().__init__()
        self.cfg, self.device, self.dtype, self.quant = cfg, device, dtype, quant

        def get(name: str, shape):
            return reader.get(name, shape).to(device=device, dtype=dtype)

        h, v = cfg.hidden_size, cfg.vocab_size
        self.expert_counts = torch.zeros(max(1, cfg.num_moe_layers), cfg.num_experts, dtype=torch.long)
        self.embed = nn.Parameter(get("model.embed_tokens.weight", (v, h)), requires_grad=False)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, i, get, quant, backend, self.expert_counts) for i in range(cfg.num_layers)
        )
        self.norm = RMSNorm(get("model.norm.weight", (h,)), cfg.rms_norm_eps)
        if cfg.tie_word_embeddings and not reader.has("lm_head.weight"):
            self.lm_head = make_linear(self.embed.data, None, "none")
        else:
            self.lm_head = make_linear(get("lm_head.weight", (v, h)), None, "none")
        self.backend = backend

    def new_kv(self) -> SeqKV:
        return SeqKV(self.cfg.num_layers)

    def kv_block_spec(self, tokens: int) -> list[tuple[str, tuple[int, ...]]]:
        """(dtype, shape) of each tensor ``SeqKV.export`` gives for ``tokens`` tokens: k [kv_heads, tokens,
        head_dim] then v [kv_heads, tokens, v_dim] per layer (MLA caches per-head K/V, v of v_head_dim)."""
        c, d = self.cfg, str(self.dtype)
        v_dim = c.v_head_dim if c.mla else c.head_dim
        kv = [(d, (c.num_kv_heads, tokens, c.head_dim)), (d, (c.num_kv_heads, tokens, v_dim))]
        return kv * c.num_layers

    @torch.inference_mode()
    def forward(self, tokens: list[list[int]], kvs: list[SeqKV], all_logits: bool = False) -> torch.Tensor:
        counts = [len(t) for t in tokens]
        starts, acc = [], 0
        for c in counts:
            starts.append(acc)
            acc += c
        flat = torch.tensor([t for seq in tokens for t in seq], dtype=torch.long, device=self.device)
        positions = torch.cat(
            [torch.arange(kv.length, kv.length + c, device=self.device) for kv, c in zip(kvs, counts)]
        )
        batch = Batch(starts, counts, kvs, positions)
        x = self.embed[flat]
        for layer in self.layers:
            x = layer(x, batch)
        x = self.norm(x)
        if not all_logits:
            x = x[torch.tensor([s + c - 1 for s, c in zip(starts, counts)], device=self.device)]
        return self.lm_head(x).float()
