"""All routed experts in the engine process (placement null)."""
from __future__ import annotations

import torch
from torch import nn

from .bank import ExpertBank, load_bank


class InProcessExperts(nn.Module):
    def __init__(self, banks: list[ExpertBank]):
        super().__init__()
        self.banks = nn.ModuleList(banks)

    @classmethod
    def load(cls, reader, cfg, device, dtype, quant: str = "none") -> "InProcessExperts":
        return cls(
            [
                load_bank(reader, cfg, layer, list(range(cfg.num_experts)), device, dtype, quant)
                for layer in cfg.moe_layers
            ]
        )

    def run(self, moe_layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.banks[moe_layer].run_topk(x, ids, weights)

    def close(self) -> None:
        pass
