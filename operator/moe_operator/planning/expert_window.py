"""From the runtime's cumulative per-expert token counts to the loads of one window, and the devices of a pool.

Pure (no I/O): the operator's rebalance loop (handlers/rebalance.py) feeds it the ``GET /admin/v1/experts``
answer of one pool (docs/contracts.md section 7) at each tick. Counts are cumulative per replica and can go down
when a replica restarts, so the window is the per-replica difference between two ticks, and a count below its
previous value means that replica restarted: its whole current count is the window's (tokens since the restart).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from moe_operator.errors import UserError

from .placement import Device

Matrix = list[list[float]]
Counts = dict[str, Matrix]     # replica id -> [layer][expert] cumulative tokens


def replica_counts(pool_doc: Mapping[str, Any]) -> Counts:
    """``{replica id: expertTokens}`` from one pool of the GET answer; UserError when malformed."""
    out: Counts = {}
    for i, rep in enumerate(pool_doc.get("replicas") or []):
        try:
            rid = str(rep["replica"])
            matrix = [[float(x) for x in row] for row in rep["expertTokens"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"replica {i} of the runtime's answer lacks replica/expertTokens: {exc}") from None
        if any(x < 0 or not math.isfinite(x) for row in matrix for x in row):
            raise UserError(f"replica {rid}: expert token counts must be finite and non-negative")
        out[rid] = matrix
    return out


def window_loads(previous: Counts | None, current: Counts, shape: tuple[int, int]) -> tuple[Matrix | None, int]:
    """Tokens per expert since ``previous``, summed over replicas: ([layers][experts] or None, replicas reset).

    ``previous`` None (the first look) gives None: there is no window yet. A replica absent before counts whole
    (it started within the window). A replica whose count went down anywhere restarted: its current count is its
    window (counted in the second value). Replicas gone since ``previous`` contribute nothing. ``shape``: (layers,
    experts) of the placement; a replica reporting another shape is a UserError (wrong model).
    """
    n_layers, n_experts = shape
    for rid, m in current.items():
        if len(m) != n_layers or any(len(row) != n_experts for row in m):
            raise UserError(f"replica {rid} reports {len(m)} layers x {len(m[0]) if m else 0} experts; "
                            f"the placement has {n_layers} x {n_experts}")
    if previous is None:
        return None, 0
    total = [[0.0] * n_experts for _ in range(n_layers)]
    resets = 0
    for rid, cur in current.items():
        prev = previous.get(rid)
        if prev is not None and _same_shape(prev, cur) and not _dropped(prev, cur):
            delta = [[c - p for c, p in zip(rc, rp)] for rc, rp in zip(cur, prev)]
        else:
            resets += prev is not None
            delta = cur
        for tl, dl in zip(total, delta):
            for e, x in enumerate(dl):
                tl[e] += x
    return total, resets


def _same_shape(a: Matrix, b: Matrix) -> bool:
    return len(a) == len(b) and all(len(x) == len(y) for x, y in zip(a, b))


def _dropped(prev: Matrix, cur: Matrix) -> bool:
    return any(c < p for rc, rp in zip(cur, prev) for c, p in zip(rc, rp))


def pool_devices(placement: Mapping[str, Any], speed: float, redundant_slots: int) -> list[Device]:
    """One Device per shard of ``placement`` (contracts section 2), all of speed ``speed`` (one accelerator type
    per pool). Slots (experts one shard may hold per layer): the most any shard holds now (its memory evidently
    fits that many; every shard of a pool has the same device) and at least an even share of the experts plus
    ``redundant_slots`` copies. Device type and Ray resources are kept so the runtime keeps each shard's actor."""
    if not (isinstance(speed, (int, float)) and speed > 0 and math.isfinite(speed)):
        raise UserError(f"device speed must be a positive number, got {speed!r}")
    if isinstance(redundant_slots, bool) or not isinstance(redundant_slots, int) or redundant_slots < 0:
        raise UserError(f"redundant slots must be a non-negative integer, got {redundant_slots!r}")
    try:
        shards = list(placement["shards"])
        n_experts = int(placement["numExperts"])
        widest = max((len(s) for layer in placement["layers"] for s in layer), default=0)
        names = [str(s["name"]) for s in shards]
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"placement must be the placement JSON (numExperts, shards, layers): {exc}") from None
    if not shards:
        raise UserError(
            "placement has no shards: nothing to rebalance (placement null runs every expert in the engine)"
        )
    if len(set(names)) != len(names):
        raise UserError(f"placement names a shard twice: {names}")
    slots = max(widest, -(-(n_experts + redundant_slots) // len(shards)))
    return [Device(name=str(s["name"]), speed=float(speed), slots=slots, node=None,
                   device_type=str(s.get("device", "cpu")), ray_resources=dict(s.get("rayResources") or {}))
            for s in shards]


def placement_shape(placement: Mapping[str, Any]) -> tuple[int, int]:
    """(numLayers, numExperts) of a placement JSON."""
    try:
        return int(placement["numLayers"]), int(placement["numExperts"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"placement lacks numLayers/numExperts: {exc}") from None


def applied(pool_doc: Mapping[str, Any]) -> tuple[int, int]:
    """(replicas running the desired placement, replicas reporting) of one pool of the GET answer."""
    want = pool_doc.get("placementId")
    reps = pool_doc.get("replicas") or []
    return sum(1 for r in reps if r.get("placementId") == want), len(reps)

