"""ShardedExperts: the expert backend that sends each shard ONE call per MoE layer and sums the answers.

Tokens routed to an expert with several copies are split round-robin between the copies (in routing order), so
redundant copies share the load.
"""
from __future__ import annotations

import torch

from .placement import ExpertPlacement, ray_options
from .shard import ExpertShard


class ShardedExperts:
    def __init__(self, placement: ExpertPlacement, checkpoint_dir: str, dtype: str, quant: str):
        import ray

        self.ray = ray
        self.placement = placement
        self._holders = [placement.holders(l) for l in range(placement.num_layers)]
        remote_cls = ray.remote(ExpertShard)
        self.actors = []
        for s, info in enumerate(placement.shards):
            by_layer = [placement.layers[l][s] for l in range(placement.num_layers)]
            opts = ray_options(info.ray_resources)
            self.actors.append(remote_cls.options(**opts).remote(checkpoint_dir, by_layer, info.device, dtype, quant))
        self.shard_info = ray.get([a.ready.remote() for a in self.actors])
        self.calls = 0

    def assign(self, moe_layer: int, ids: torch.Tensor) -> torch.Tensor:
        """Shard index for each (token, slot) pair [N*k]: the i-th pair of expert e goes to copy i mod copies(e)."""
        flat = ids.reshape(-1).cpu()
        holders = self._holders[moe_layer]
        shard_of = torch.empty_like(flat)
        seen: dict[int, int] = {}
        for p, e in enumerate(flat.tolist()):
            copies = holders[e]
            i = seen.get(e, 0)
            seen[e] = i + 1
            shard_of[p] = copies[i % len(copies)]
        return shard_of

    def run(self, moe_layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        n, k = ids.shape
        shard_of = self.assign(moe_layer, ids)
        token = torch.arange(n).repeat_interleave(k)
        expert = ids.reshape(-1).cpu()
        weight = weights.reshape(-1).float().cpu()
        xc = x.detach().float().cpu()
        futures, rows_of = [], []
        for s, actor in enumerate(self.actors):
            sel = (shard_of == s).nonzero().flatten()
            if sel.numel() == 0:
                continue
            rows, local = torch.unique(token[sel], return_inverse=True)
            futures.append(actor.run.remote(moe_layer, xc[rows].numpy(), local.numpy(), expert[sel].numpy(),
                                            weight[sel].numpy()))
            rows_of.append(rows)
            self.calls += 1
        out = torch.zeros(n, x.shape[1], dtype=torch.float32)
        for rows, part in zip(rows_of, self.ray.get(futures)):
            out.index_add_(0, rows, torch.tensor(part))  # Ray hands back read-only arrays
        return out.to(device=x.device, dtype=x.dtype)

    def weight_bytes(self) -> int:
        return sum(i["weight_bytes"] for i in self.shard_info)

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:
                pass
        self.actors = []
