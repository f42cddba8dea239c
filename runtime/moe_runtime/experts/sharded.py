"""ShardedExperts: the expert backend that sends each shard ONE call per MoE layer and sums the answers.

Tokens routed to an expert with several copies are split round-robin between the copies (in routing order), so
redundant copies share the load.

Live rebalancing (docs/placement.md): ``prepare(new)`` loads the new copies into kept shards and starts new shards
while the old map serves; ``commit(staged)`` swaps the routing table (one assignment, called between two steps);
``release(staged)`` then frees copies no longer placed and stops shards the new placement does not name.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from .placement import ExpertPlacement, ray_options
from .shard import ExpertShard

# Seconds a live move may spend loading (new shard actors start, kept ones load copies) before it is abandoned
# (what was loaded is freed, the old map keeps serving). A shard whose rayResources no node offers would otherwise
# wait forever and hold the engine's one-move-at-a-time lock. Env MOE_SHARD_LOAD_TIMEOUT_S overrides.
LOAD_TIMEOUT_S = float(os.environ.get("MOE_SHARD_LOAD_TIMEOUT_S", "600"))


class ShardedExperts:
    def __init__(self, placement: ExpertPlacement, checkpoint_dir: str, dtype: str, quant: str):
        import ray

        self.ray = ray
        self.placement = placement
        self._holders = [placement.holders(layer) for layer in range(placement.num_layers)]
        remote_cls = ray.remote(ExpertShard)
        self.actors = []
        for s, info in enumerate(placement.shards):
            by_layer = [placement.layers[layer][s] for layer in range(placement.num_layers)]
            opts = ray_options(info.ray_resources)
            self.actors.append(remote_cls.options(**opts).remote(checkpoint_dir, by_layer, info.device, dtype, quant))
        self.shard_info = ray.get([a.ready.remote() for a in self.actors])
        self.calls = 0
        self.swapped_at: float | None = None
        self._old_actors: list = []
        self._remote_cls, self._checkpoint_dir, self._dtype, self._quant = remote_cls, checkpoint_dir, dtype, quant

    # ---- live placement ----
    def prepare(self, new: ExpertPlacement) -> "Staged":
        """Load what ``new`` adds (the current map keeps serving). Shards are matched by name; a name whose device or
        rayResources changed gets a new actor. On failure, whatever was loaded is freed and the error is raised."""
        new.check_model(self.placement.num_layers, self.placement.num_experts)
        names = [info.name for info in new.shards]
        if len(set(names)) != len(names):
            raise ValueError(f"placement names a shard twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
        old = {info.name: s for s, info in enumerate(self.placement.shards)}
        L = new.num_layers
        actors, added, kept, fresh, futures, fresh_idx = [], {}, set(), [], [], []
        try:
            for s, info in enumerate(new.shards):
                want = [new.layers[layer][s] for layer in range(L)]
                o = old.get(info.name)
                if o is not None and self.placement.shards[o] == info:
                    add = [sorted(set(want[layer]) - set(self.placement.layers[layer][o])) for layer in range(L)]
                    actors.append(self.actors[o])
                    kept.add(o)
                    if any(add):
                        added[o] = add
                        futures.append(self.actors[o].add.remote(add))
                else:
                    a = self._remote_cls.options(**ray_options(info.ray_resources)).remote(
                        self._checkpoint_dir, want, info.device, self._dtype, self._quant)
                    actors.append(a)
                    fresh.append(a)
                    fresh_idx.append(s)
                    futures.append(a.ready.remote())
            try:
                self.ray.get(futures, timeout=LOAD_TIMEOUT_S)
            except self.ray.exceptions.GetTimeoutError:
                raise TimeoutError(
                    f"the new placement's shards did not load within {LOAD_TIMEOUT_S:g} s (a shard "
                    "whose rayResources no node offers?); MOE_SHARD_LOAD_TIMEOUT_S sets the limit"
                ) from None
        except Exception:
            self._undo(added, fresh)
            raise
        drop = {}
        for o in kept:
            n = next(i for i, info in enumerate(new.shards) if info.name == self.placement.shards[o].name)
            gone = [sorted(set(self.placement.layers[layer][o]) - set(new.layers[layer][n])) for layer in range(L)]
            if any(gone):
                drop[o] = gone
        retired = [a for o, a in enumerate(self.actors) if o not in kept]
        freed = sum(len(x) for gone in drop.values() for x in gone) + sum(
            len(self.placement.layers[layer][o]) for o in range(len(self.actors)) if o not in kept for layer in range(L)
        )
        loaded = sum(len(x) for add in added.values() for x in add) + sum(
            len(new.layers[layer][s]) for s in fresh_idx for layer in range(L))
        return Staged(new, actors, added, drop, fresh, retired, loaded, freed)

    def commit(self, staged: "Staged") -> None:
        """Swap the routing table. Call between two steps (no run() in progress): the next run() uses the new map."""
        self.placement, self._holders, self._old_actors, self.actors = (
            staged.placement, [staged.placement.holders(layer) for layer in range(staged.placement.num_layers)],
            self.actors, staged.actors)
        self.swapped_at = time.monotonic()  # seconds (monotonic clock) of the last swap

    def release(self, staged: "Staged") -> None:
        """After commit: free copies no longer placed and stop retired shards."""
        try:
            self.ray.get([self._old_actors[o].drop.remote(gone) for o, gone in staged.drop.items()])
        finally:
            for a in staged.retired:
                self._kill(a)
            self._old_actors = []
        self.shard_info = self.ray.get([a.ready.remote() for a in self.actors])

    def abort(self, staged: "Staged") -> None:
        """prepare() succeeded but the swap did not happen: free what prepare() loaded."""
        self._undo(staged.added, staged.fresh)

    def _undo(self, added: dict[int, list[list[int]]], fresh: list) -> None:
        try:
            self.ray.get([self.actors[o].drop.remote(add) for o, add in added.items()])
        except Exception:
            pass
        for a in fresh:
            self._kill(a)

    def _kill(self, actor) -> None:
        try:
            self.ray.kill(actor)
        except Exception:
            pass

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
            self._kill(a)
        self.actors = []


@dataclass
class Staged:
    """A placement loaded but not yet routed to (ShardedExperts.prepare -> commit -> release)."""

    placement: ExpertPlacement
    actors: list  # one per shard of ``placement``
    added: dict[int, list[list[int]]]  # old shard index -> expert ids loaded into it, per MoE layer
    drop: dict[int, list[list[int]]]  # old shard index -> expert ids to free after the swap, per MoE layer
    fresh: list  # actors started for this placement
    retired: list  # old actors the placement does not keep
    loaded: int  # expert copies loaded (summed over MoE layers)
    freed: int  # expert copies freed by release() (summed over MoE layers)
