"""The expert placement of docs/contracts.md section 2, read from its JSON dict (or moe_runtime.config.Placement)."""
from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Any

MAX_SHARDS = 1024  # expert-shard actors in one placement (each is a Ray actor of its own)
MAX_REDUNDANT_COPIES = 4096  # expert copies beyond one per expert, per MoE layer (the operator's redundantSlots cap)


def _count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def missing_experts(seen: set[int], num_experts: int, show: int = 10) -> str:
    """"[a, b, ...]": the first ``show`` expert ids in 0..num_experts-1 not in ``seen`` ("" when none), without
    building range(num_experts) as a set: the work is bounded by ``len(seen)``, not by ``num_experts``."""
    if len(seen) >= num_experts:
        return ""
    first = [str(e) for e in islice((e for e in range(num_experts) if e not in seen), show)]
    return "[" + ", ".join(first + ["..."] * (num_experts - len(seen) > show)) + "]"


def check_shape(obj: Any, num_layers: int, num_experts: int) -> None:
    """Check a raw placement JSON's dimensions against the served model (``num_layers`` MoE layers x
    ``num_experts``) by counting, before anything is built from it: ``numLayers``/``numExperts`` equal the model's,
    1..MAX_SHARDS uniquely named shards, 1 or ``numLayers`` ``layers`` entries of one id list per shard, ids integers
    in range, no id twice on one shard, at most ``numExperts + MAX_REDUNDANT_COPIES`` copies per layer. Raises
    ValueError naming the first problem. Completeness (every expert placed) is left to the full parse."""
    if not isinstance(obj, dict):
        raise ValueError("a placement is an object {numLayers, numExperts, shards, layers}")
    n_layers, n_exp = obj.get("numLayers"), obj.get("numExperts")
    if not (_count(n_layers) and _count(n_exp)) or (n_layers, n_exp) != (num_layers, num_experts):
        raise ValueError(f"placement is for {n_layers!r} MoE layers x {n_exp!r} experts but the model has "
                         f"{num_layers} x {num_experts}")
    shards, layers = obj.get("shards"), obj.get("layers")
    if not isinstance(shards, list) or not 1 <= len(shards) <= MAX_SHARDS:
        raise ValueError(f"placement.shards must be a list of 1 to at most {MAX_SHARDS} shards, got "
                         f"{len(shards) if isinstance(shards, list) else type(shards).__name__}")
    names = [s["name"] for s in shards if isinstance(s, dict) and isinstance(s.get("name"), str)]
    if len(set(names)) != len(names):  # shards are matched by name; a shard without one is the full parse's error
        raise ValueError(f"placement.shards names a shard twice: {sorted({n for n in names if names.count(n) > 1})}")
    if not isinstance(layers, list) or len(layers) not in (1, num_layers):
        raise ValueError(f"placement.layers must be a list of 1 or numLayers={num_layers} entries, got "
                         f"{len(layers) if isinstance(layers, list) else type(layers).__name__}")
    for li, layer in enumerate(layers):
        if not isinstance(layer, list) or len(layer) != len(shards):
            raise ValueError(f"placement.layers[{li}] has {len(layer) if isinstance(layer, list) else 'no'} shards; "
                             f"expected {len(shards)} (one expert-id list per shard)")
        copies = 0
        for si, ids in enumerate(layer):
            if not isinstance(ids, list):
                raise ValueError(f"placement.layers[{li}][{si}] must be a list of expert ids")
            copies += len(ids)
            if copies > num_experts + MAX_REDUNDANT_COPIES:
                raise ValueError(f"placement.layers[{li}] holds more than numExperts + {MAX_REDUNDANT_COPIES} "
                                 "expert copies")
            bad = next((e for e in ids if not _count(e) or not 0 <= e < num_experts), None)
            if bad is not None:
                raise ValueError(f"placement.layers[{li}][{si}] names expert {bad!r}; ids are 0..{num_experts - 1}")
            if len(set(ids)) != len(ids):
                raise ValueError(f"placement.layers[{li}][{si}] names an expert twice (one copy per shard)")


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
    def parse(cls, obj: Any, model: tuple[int, int] | None = None) -> "ExpertPlacement":
        """Accept the camelCase JSON dict or any object with ``to_json()`` (the pydantic Placement). With ``model``
        = (MoE layers, experts) of the served model, ``check_shape`` runs first: nothing is expanded or built
        from a placement for another model."""
        if hasattr(obj, "to_json"):
            obj = obj.to_json()
        if model is not None:
            check_shape(obj, *model)
        try:
            n_layers, n_exp = int(obj["numLayers"]), int(obj["numExperts"])
            shards = [
                ShardInfo(s["name"], s.get("device", "cpu"), dict(s.get("rayResources") or {})) for s in obj["shards"]
            ]
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
            unknown = sorted(e for e in seen if not 0 <= e < n_exp)
            if unknown or len(seen) != n_exp:
                raise ValueError(f"placement.layers[{li}] must hold every expert 0..{n_exp - 1} at least once, "
                                 f"missing {missing_experts(seen, n_exp) or []}, unknown {unknown}")
        return cls(n_layers, n_exp, shards, [[list(map(int, s)) for s in layer] for layer in layers])

    def check_model(self, num_moe_layers: int, num_experts: int) -> None:
        if (self.num_layers, self.num_experts) != (num_moe_layers, num_experts):
            raise ValueError(
                f"placement is for {self.num_layers} MoE layers x {self.num_experts} experts but the model "
                f"has {num_moe_layers} x {num_experts}"
            )

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
