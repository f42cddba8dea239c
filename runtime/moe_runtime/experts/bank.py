"""A set of routed experts (SwiGLU FFNs) that runs all (token, expert) pairs it is given in one call."""
from __future__ import annotations

import torch
from torch import nn

from moe_runtime.quant import make_linear


class ExpertFFN(nn.Module):
    """down(silu(gate(x)) * up(x)): the expert FFN of Mixtral, Qwen-MoE and DeepSeek."""

    def __init__(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, quant: str = "none"):
        super().__init__()
        self.gate = make_linear(gate, mode=quant)
        self.up = make_linear(up, mode=quant)
        self.down = make_linear(down, mode=quant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


class ExpertBank(nn.Module):
    """Experts of one MoE layer held by one process (all of them, or a shard's subset)."""

    def __init__(self, experts: dict[int, ExpertFFN]):
        super().__init__()
        self.ids = sorted(experts)
        self.experts = nn.ModuleDict({str(e): experts[e] for e in self.ids})

    def add(self, experts: dict[int, ExpertFFN]) -> None:
        """Hold more experts (live rebalancing); the ones already held are kept as they are."""
        for e, m in experts.items():
            if str(e) not in self.experts:
                self.experts[str(e)] = m
        self.ids = sorted(int(k) for k in self.experts)

    def drop(self, ids: list[int]) -> None:
        """Free the given experts (live rebalancing, after the routing table no longer names them here)."""
        for e in ids:
            if str(e) in self.experts:
                del self.experts[str(e)]
        self.ids = sorted(int(k) for k in self.experts)

    def run_pairs(
        self, x: torch.Tensor, token: torch.Tensor, expert: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        """Sum over pairs p of weight[p] * expert[p](x[token[p]]).

        x: [n, hidden]; token, expert: [P] int64; weight: [P] float. Returns [n, hidden] in x's dtype.
        """
        out = torch.zeros_like(x)
        if token.numel() == 0:
            return out
        order = torch.argsort(expert, stable=True)
        expert_sorted = expert[order]
        uniq, counts = torch.unique_consecutive(expert_sorted, return_counts=True)
        start = 0
        for e, c in zip(uniq.tolist(), counts.tolist()):
            sel = order[start:start + c]
            start += c
            key = str(e)
            if key not in self.experts:
                raise KeyError(f"expert {e} is not held here (holds {self.ids})")
            rows = token[sel]
            y = self.experts[key](x[rows]) * weight[sel].to(x.dtype)[:, None]
            out.index_add_(0, rows, y)
        return out

    def run_topk(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x: [N, hidden], ids/weights: [N, k] from the router. Returns [N, hidden]."""
        k = ids.shape[1]
        token = torch.arange(x.shape[0], device=x.device).repeat_interleave(k)
        return self.run_pairs(x, token, ids.reshape(-1), weights.reshape(-1))


def load_bank(reader, cfg, layer: int, expert_ids: list[int], device, dtype, quant: str = "none") -> ExpertBank:
    """Load the given experts of decoder layer ``layer`` from a CheckpointReader, checking shapes against cfg."""
    return ExpertBank(load_experts(reader, cfg, layer, expert_ids, device, dtype, quant))


def load_experts(
    reader, cfg, layer: int, expert_ids: list[int], device, dtype, quant: str = "none"
) -> dict[int, ExpertFFN]:
    h, i = cfg.hidden_size, cfg.moe_intermediate_size
    experts = {}
    for e in expert_ids:
        g, u, d = cfg.expert_names(layer, e)
        experts[e] = ExpertFFN(
            reader.get(g, (i, h)).to(device=device, dtype=dtype),
            reader.get(u, (i, h)).to(device=device, dtype=dtype),
            reader.get(d, (h, i)).to(device=device, dtype=dtype),
            quant,
        )
    return experts
