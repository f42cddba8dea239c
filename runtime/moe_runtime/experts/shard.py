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
        self._reader, self._cfg, self._quant, self._weight_bytes = reader, cfg, quant, weight_bytes
        self.bytes = sum(weight_bytes(b) for b in self.banks)

    def ready(self) -> dict:
        return {"device": str(self.device), "weight_bytes": self.bytes}

    def add(self, experts_by_layer: list[list[int]]) -> dict:
        """Load more expert copies (live rebalancing) while the ones held keep serving. Returns ready()."""
        from .bank import load_experts

        for i, layer in enumerate(self._cfg.moe_layers):
            if experts_by_layer[i]:
                self.banks[i].add(load_experts(self._reader, self._cfg, layer, experts_by_layer[i], self.device,
                                               self.dtype, self._quant))
        self.bytes = sum(self._weight_bytes(b) for b in self.banks)
        return self.ready()

    def drop(self, experts_by_layer: list[list[int]]) -> dict:
        """Free expert copies the routing table no longer sends tokens to. Returns ready()."""
        for bank, ids in zip(self.banks, experts_by_layer):
            bank.drop(ids)
        self.bytes = sum(self._weight_bytes(b) for b in self.banks)
        return self.ready()

    def held(self) -> list[list[int]]:
        """Expert ids held per MoE layer."""
        return [list(b.ids) for b in self.banks]

    def run(self, moe_layer: int, x, token, expert, weight):
        """One call per MoE layer and step: x [n, hidden] float32 (the tokens routed here) and the (token, expert,
        weight) pairs [P], all numpy (Ray ships numpy arrays zero-copy: half the per-call cost of torch tensors).
        Returns the weighted expert outputs [n, hidden] float32 numpy."""
        def t(a):  # Ray passes read-only arrays; torch.tensor copies (they are small: the tokens of one step)
            return torch.tensor(a, device=self.device)

        out = self.banks[moe_layer].run_pairs(t(x).to(self.dtype), t(token), t(expert), t(weight))
        return out.float().cpu().numpy()
