"""Whether to move a running deployment to a new expert placement (issue 7, live rebalancing). Pure: no I/O.

The operator feeds it the tokens routed to each expert over a window (the increase of the runtime's
``moe_expert_tokens_total{layer, expert}``), the placement the replicas run now (contracts section 2 JSON) and the
devices; it answers whether to apply a freshly balanced placement. A move costs weight loading, so it is only worth
it when the slowest device's time per step drops by at least ``min_gain``, and at most once per ``cooldown_s``.

Imbalance is speed-aware: the MoE part of one step (per layer the slowest device's load / speed, summed over
layers) over the ideal step (per layer total load / total speed). 1.0 = perfectly even; 1.5 = the step takes 50%
longer than on an ideally balanced fleet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

from moe_operator.errors import UserError

from .placement import Device, LayerPlacement, Placement, balance, placement_stats, to_placement_json


@dataclass(frozen=True)
class RebalanceDecision:
    """``apply``: move to ``placement`` now. ``placement``: the balanced placement JSON (contracts section 2), or
    None when none was computed (cooldown, no traffic). ``imbalance_before`` / ``imbalance_after``: step time over
    the ideal step (see module doc) for the current / proposed placement under the window's loads (after equals
    before when nothing was computed). ``gain``: 1 - after / before step time. ``reason``: one sentence for the
    status and the Event. ``kind``: which case it is, for callers to branch on (never the reason's words): apply,
    balanced (computed, not worth a move), cooldown, no_traffic; it may be left out only when ``apply``."""

    apply: bool
    placement: dict | None
    imbalance_before: float
    imbalance_after: float
    gain: float
    reason: str
    kind: Literal["apply", "balanced", "cooldown", "no_traffic", ""] = ""

    def __post_init__(self) -> None:
        if not self.kind:
            if not self.apply:
                raise ValueError("a RebalanceDecision that does not apply must say its kind")
            object.__setattr__(self, "kind", "apply")
        if (self.kind == "apply") != self.apply:
            raise ValueError(f"kind {self.kind!r} contradicts apply={self.apply}")


def should_rebalance(
    loads: Sequence[Sequence[float]],
    current_placement: Mapping[str, Any],
    devices: Sequence[Device],
    *,
    redundant_slots: int,
    min_gain: float,
    last_applied_at: float | None,
    cooldown_s: float,
    now: float,
    num_groups: int | None = None,
) -> RebalanceDecision:
    """Decide whether to rebalance. ``loads``: [L][E] tokens per expert over the window. ``devices``: one per shard,
    matched to ``current_placement``'s shards by name. ``min_gain``: the least relative drop of the step time that
    is worth a move, in [0, 1) (0.1 = 10%). ``last_applied_at`` / ``now``: seconds on one clock (None = never).
    ``cooldown_s``: seconds to wait after a move. Raises UserError on malformed input."""
    if not (isinstance(min_gain, (int, float)) and 0 <= min_gain < 1):
        raise UserError(f"min_gain must be a fraction in [0, 1), got {min_gain!r}")
    if not (isinstance(cooldown_s, (int, float)) and cooldown_s >= 0 and math.isfinite(cooldown_s)):
        raise UserError(f"cooldown_s must be a non-negative number of seconds, got {cooldown_s!r}")
    current = placement_from_json(current_placement, devices)
    try:
        matrix = [[float(x) for x in row] for row in loads]
    except (TypeError, ValueError):
        matrix = None
    if matrix is None or len(matrix) != current.num_layers or any(len(r) != current.num_experts for r in matrix):
        raise UserError(f"loads must be {current.num_layers} layers x {current.num_experts} experts (the current "
                        f"placement's shape), one token count per expert")
    if any(x < 0 or not math.isfinite(x) for row in matrix for x in row):
        raise UserError("loads must be finite non-negative token counts")
    if sum(map(sum, matrix)) == 0:
        return RebalanceDecision(False, None, 1.0, 1.0, 0.0, "no tokens were routed in the window", "no_traffic")
    before = placement_stats(current, matrix)
    ideal = _ideal(matrix, devices)
    imb_before = before.step_time / ideal
    if last_applied_at is not None and now - last_applied_at < cooldown_s:
        left = cooldown_s - (now - last_applied_at)
        return RebalanceDecision(
            False,
            None,
            imb_before,
            imb_before,
            0.0,
            f"cooldown: {left:.0f}s left of {cooldown_s:.0f}s since the last rebalance",
            "cooldown",
        )
    proposed = balance(matrix, devices, redundant_slots, num_groups=num_groups)
    after = placement_stats(proposed, matrix)
    imb_after = after.step_time / ideal
    gain = 1.0 - after.step_time / before.step_time if before.step_time > 0 else 0.0
    doc = to_placement_json(proposed)
    if _same(doc, current_placement):
        return RebalanceDecision(
            False, doc, imb_before, imb_after, gain, "the current placement is already the balanced one", "balanced"
        )
    if gain < min_gain or gain <= 0:
        return RebalanceDecision(False, doc, imb_before, imb_after, gain,
                                 f"gain {gain:.1%} is below the threshold {min_gain:.1%} "
                                 f"(imbalance {imb_before:.3f} -> {imb_after:.3f})", "balanced")
    return RebalanceDecision(True, doc, imb_before, imb_after, gain,
                             f"imbalance {imb_before:.3f} -> {imb_after:.3f}: step time {gain:.1%} shorter", "apply")


def placement_from_json(doc: Mapping[str, Any], devices: Sequence[Device]) -> Placement:
    """Contracts section 2 JSON -> Placement over ``devices`` (shards matched by name)."""
    try:
        n_layers, n_exp = int(doc["numLayers"]), int(doc["numExperts"])
        names = [str(s["name"]) for s in doc["shards"]]
        layers = list(doc["layers"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"current placement must be the placement JSON (numLayers, numExperts, shards, layers): {exc}"
        ) from None
    index = {d.name: i for i, d in enumerate(devices)}
    missing = [n for n in names if n not in index]
    if missing:
        raise UserError(f"current placement names shards {missing} that are not among the devices {sorted(index)}")
    if len(layers) == 1:
        layers = layers * n_layers
    if len(layers) != n_layers or any(len(layer) != len(names) for layer in layers):
        raise UserError(
            f"current placement layers must be 1 or numLayers={n_layers} entries of {len(names)} shards each"
        )
    out = []
    for li, layer in enumerate(layers):
        slots = sorted((index[name], int(e)) for name, experts in zip(names, layer) for e in experts)
        replicas = [0] * n_exp
        for _, e in slots:
            if not 0 <= e < n_exp:
                raise UserError(f"current placement layer {li} names expert {e}; the model has {n_exp}")
            replicas[e] += 1
        if 0 in replicas:
            raise UserError(f"current placement layer {li} lacks expert {replicas.index(0)}")
        out.append(LayerPlacement(tuple(e for _, e in slots), tuple(d for d, _ in slots), tuple(replicas)))
    return Placement(devices=tuple(devices), num_experts=n_exp, layers=tuple(out))


def _ideal(matrix: list[list[float]], devices: Sequence[Device]) -> float:
    speed = sum(d.speed for d in devices)
    return sum(sum(row) for row in matrix) / speed


def _expanded(doc: Mapping[str, Any]) -> list:
    layers = list(doc["layers"])
    return layers * int(doc["numLayers"]) if len(layers) == 1 else layers


def _same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Same shards hold the same experts in every layer (order inside a shard does not matter)."""
    if [s["name"] for s in a["shards"]] != [s["name"] for s in b["shards"]]:
        return False
    return all([sorted(x) for x in la] == [sorted(x) for x in lb] for la, lb in zip(_expanded(a), _expanded(b)))
