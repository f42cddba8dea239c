"""The sparse MoE block: router on the replica, routed experts through a backend (local bank or Ray shards),
optional shared expert(s) (Qwen2-MoE's is gated by sigmoid(shared_expert_gate(x)))."""
from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from .config import MoEConfig
from .layers import DenseMLP
from .router import route


class ExpertBackend(Protocol):
    def run(self, moe_layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [N, hidden], ids/weights [N, k] -> sum_k weights * expert(x), [N, hidden]."""
        ...


class MoEBlock(nn.Module):
    def __init__(self, cfg: MoEConfig, layer: int, get, quant: str, backend: ExpertBackend, counts: torch.Tensor):
        super().__init__()
        p = cfg.weight_prefix(layer)
        h = cfg.hidden_size
        self.cfg, self.moe_layer, self.backend, self.counts = cfg, cfg.moe_index(layer), backend, counts
        # the router stays in float32 (it is tiny and routing decisions are sensitive)
        self.gate_w = nn.Parameter(get(f"{p}.gate.weight", (cfg.num_experts, h)).float(), requires_grad=False)
        self.bias = None
        if cfg.score_correction_bias:
            self.bias = nn.Parameter(
                get(f"{p}.gate.e_score_correction_bias", (cfg.num_experts,)).float(), requires_grad=False
            )
        self.shared = None
        self.shared_gate = None
        if cfg.shared_intermediate_size:
            name = "shared_expert" if cfg.arch == "qwen2_moe" else "shared_experts"
            self.shared = DenseMLP(f"{p}.{name}", h, cfg.shared_intermediate_size, get, quant)
            if cfg.shared_expert_gate:
                self.shared_gate = nn.Parameter(get(f"{p}.shared_expert_gate.weight", (1, h)), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = nn.functional.linear(x.float(), self.gate_w)
        ids, weights = route(logits, self.cfg, self.bias)
        self.counts[self.moe_layer] += torch.bincount(ids.reshape(-1).cpu(), minlength=self.cfg.num_experts)
        out = self.backend.run(self.moe_layer, x, ids, weights)
        if self.shared is not None:
            s = self.shared(x)
            if self.shared_gate is not None:
                s = torch.sigmoid(nn.functional.linear(x, self.shared_gate)) * s
            out = out + s
        return out
