"""ExpertShard: the Ray actor that holds some experts of every MoE layer and runs them on its own device."""
from __future__ import annotations

import torch


class ExpertShard:
    """Loads its experts straight from the checkpoint (weights never travel through the driver).

    ``experts_by_layer[moe_layer]`` = the expert ids it holds in that layer.
    """

    def __init__(self, checkpoint_dir: str, experts_by_layer: list[list[int]], device: str, dtype: str, quant: str):
        from moe_runtime.checkpoint.reader import CheckpointReader
        from moe_runtime.device import resolve_device, resolve_dtype
        from moe_runtime.model.config import MoEConfig
        from moe_runtime.quant import weight_bytes

        from .bank import load_bank

        torch.set_num_threads(1)  # several shards share a host's cores
        reader = CheckpointReader(checkpoint_dir)
        cfg = MoEConfig.from_hf(reader.config, source=str(reader.dir / "config.json"))
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.banks = [load_bank(reader, cfg, layer, experts_by_layer[i], self.device, self.dtype, quant)
                      for i, layer in enumerate(cfg.moe_layers)]
        self.bytes = sum(weight_bytes(b) for b in self.banks)

    def ready(self) -> dict:
        return {"device": str(self.device), "weight_bytes": self.bytes}

    def run(self, moe_layer: int, x, token, expert, weight):
        """One call per MoE layer and step: x [n, hidden] float32 (the tokens routed here) and the (token, expert,
        weight) pairs [P], all numpy (Ray ships numpy arrays zero-copy: half the per-call cost of torch tensors).
        Returns the weighted expert outputs [n, hidden] float32 numpy."""
        def t(a):  # Ray passes read-only arrays; torch.tensor copies (they are small: the tokens of one step)
            return torch.tensor(a, device=self.device)

        out = self.banks[moe_layer].run_pairs(t(x).to(self.dtype), t(token), t(expert), t(weight))
        return out.float().cpu().numpy()
