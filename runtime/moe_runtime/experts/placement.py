"""The expert placement of docs/contracts.md section 2, read from its JSON dict (or moe_runtime.config.Placement)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ShardInfo:
    name: str
    device: str
    ray_resources: dict[str, float]


@dataclass
class ExpertPlacement:
    num_layers: int
    num_experts: int
    shards: list[ShardInfo]
    layers: list[list[list[int]]]  # [moe_layer][shard] -> expert ids (expanded to num_layers entries)

    @classmethod
    def parse(cls, obj: Any) -> "ExpertPlacement":
        """Accept the camelCase JSON dict or any object with ``to_json()`` (the pydantic Placement)."""
        if hasattr(obj, "to_json"):
            obj = obj.to_json()
        try:
            n_layers, n_exp = int(obj["numLayers"]), int(obj["numExperts"])
            shards = [ShardInfo(s["name"], s.get("device", "cpu"), dict(s.get("rayResources") or {})) for s in obj["shards"]]
            layers = obj["layers"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"placement lacks {e}; expected numLayers, numExperts, shards, layers") from None
        if len(layers) == 1:
            layers = layers * n_layers
        if len(layers) != n_layers:
            raise ValueError(f"placement has {len(layers)} layer entries; expected 1 or numLayers={n_layers}")
        for li, layer in enumerate(layers):
            if len(layer) != len(shards):
                raise ValueError(f"placement.layers[{li}] has {len(layer)} shards; expected {len(shards)}")
            seen = {e for experts in layer for e in experts}
            if seen != set(range(n_exp)):
                raise ValueError(f"placement.layers[{li}] must hold every expert 0..{n_exp - 1} at least once, "
                                 f"missing {sorted(set(range(n_exp)) - seen)}, unknown {sorted(seen - set(range(n_exp)))}")
        return cls(n_layers, n_exp, shards, [[list(map(int, s)) for s in layer] for layer in layers])

    def check_model(self, num_moe_layers: int, num_experts: int) -> None:
        if (self.num_layers, self.num_experts) != (num_moe_layers, num_experts):
            raise ValueError(f"placement is for {self.num_layers} MoE layers x {self.num_experts} experts but the model "
                             f"has {num_moe_layers} x {num_experts}")

    def holders(self, layer: int) -> dict[int, list[int]]:
        """expert id -> shard indices holding a copy, in MoE layer ``layer``."""
        out: dict[int, list[int]] = {}
        for s, experts in enumerate(self.layers[layer]):
            for e in experts:
                out.setdefault(e, []).append(s)
        return out


def ray_options(resources: dict[str, float]) -> dict[str, Any]:
    """Placement rayResources -> ray actor options: CPU -> num_cpus, GPU -> num_gpus, others -> resources."""
    opts: dict[str, Any] = {"num_cpus": 0}
    custom = {}
    for k, v in resources.items():
        if k == "CPU":
            opts["num_cpus"] = v
        elif k == "GPU":
            opts["num_gpus"] = v
        else:
            custom[k] = v
    if custom:
        opts["resources"] = custom
    return opts
