"""Adapters: a MoEDeployment (moe_operator.api) -> the policy's PoolModel list and Settings.

Per-replica capacity comes from, in order:
  1. the annotation ``autoscaling.moe-operator.io/capacity``: JSON ``{pool: {prefillTps, decodeTps,
     cachedPrefillTps}}`` (tokens/s per replica), for capacities measured on the real fleet;
  2. the planner's roofline model ``moe_operator.planning.pool_capacity`` when it is available.
Prices are $/device-hour (pool override, else catalog) x devicesPerReplica.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from moe_operator.errors import SpecInvalid, UserError

from .model import PoolModel, Settings, WorkWeights

CAPACITY_ANNOTATION = "autoscaling.moe-operator.io/capacity"


@dataclass(frozen=True)
class Capacity:
    """One replica's tokens/s per kind and $/hour (the shape of planning's PoolCapacity)."""

    prefill_tps: float
    decode_tps: float
    cached_prefill_tps: float
    price_per_hour: float | None = None


def weights_from_capacities(capacities: Sequence[Capacity]) -> WorkWeights:
    """One set of work weights for all pools: the mean of each pool's decode/prefill ratios.

    Exact when pools share a prefill:decode ratio (same model and engine on different chips); otherwise
    each pool's work capacity is still its decode_tps and the error is the spread of the ratios.
    """
    ws = [WorkWeights.from_capacity(c.prefill_tps, c.decode_tps, c.cached_prefill_tps) for c in capacities]
    return WorkWeights(prompt=sum(w.prompt for w in ws) / len(ws),
                       cached_prompt=sum(w.cached_prompt for w in ws) / len(ws))


def pool_models_from_plan(pools: Sequence[Any], capacities: Mapping[str, Any], prices: Mapping[str, float],
                          max_batch_size: int = 16) -> tuple[list[PoolModel], WorkWeights]:
    """PoolModels from api PoolSpecs, per-pool capacities (Capacity or planning's PoolCapacity) and $/replica-hour."""
    caps = {p.name: capacities[p.name] for p in pools}
    weights = weights_from_capacities(
        [Capacity(c.prefill_tps, c.decode_tps, c.cached_prefill_tps) for c in caps.values()]
    )
    out = []
    for p in pools:
        c = caps[p.name]
        out.append(PoolModel(name=p.name, price_per_hour=prices[p.name], capacity=float(c.decode_tps),
                             min_replicas=p.min_replicas, max_replicas=p.max_replicas,
                             cold_start_s=float(p.cold_start_seconds),
                             tpot_at_capacity_s=max_batch_size / float(c.decode_tps),
                             prefill_tps=float(c.prefill_tps)))
    return out, weights


def _annotation_capacities(deployment) -> dict[str, Capacity]:
    annotations = (deployment.metadata.model_extra or {}).get("annotations") or {}
    raw = annotations.get(CAPACITY_ANNOTATION)
    if raw is None:
        return {}
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
        return {name: Capacity(*(_rate(name, v, k) for k in ("prefillTps", "decodeTps", "cachedPrefillTps")))
                for name, v in data.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserError(f"annotation {CAPACITY_ANNOTATION} must be JSON {{pool: {{prefillTps, decodeTps, "
                        f"cachedPrefillTps}}}} in tokens/s per replica ({exc})") from None


def _rate(pool: str, entry: Mapping[str, Any], key: str) -> float:
    """One tokens/s figure of the annotation: a positive finite JSON number (0 divides by zero in the policy,
    NaN and infinity size fleets from nothing)."""
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{pool}.{key} is {json.dumps(value)}: it must be a positive finite number")
    return float(value)


def _planner_capacity() -> Callable | None:
    try:
        from moe_operator.planning import pool_capacity  # type: ignore[attr-defined]
    except ImportError:
        return None
    return pool_capacity


def pool_models_from_spec(deployment, catalog=None) -> tuple[list[PoolModel], WorkWeights]:
    """PoolModels for a parsed MoEDeployment; SpecInvalid when a pool has no capacity or price."""
    from moe_operator.catalog import Catalog

    catalog = catalog or Catalog.default()
    spec = deployment.spec
    caps = _annotation_capacities(deployment)
    planner = _planner_capacity()
    prices = {}
    for p in spec.pools:
        prices[p.name] = catalog.price(p.accelerator, p.price_per_device_hour, pool=p.name) * p.devices_per_replica
        if p.name not in caps:
            if planner is None:
                raise SpecInvalid(f"pool {p.name!r} has no capacity: set annotation {CAPACITY_ANNOTATION} "
                                  "(tokens/s per replica) until the planner's capacity model is available",
                                  reason="NoCapacity")
            c = planner(spec, p, catalog)
            caps[p.name] = Capacity(
                c.prefill_tps, c.decode_tps, c.cached_prefill_tps, getattr(c, "price_per_hour", None)
            )
    unknown = set(caps) - {p.name for p in spec.pools}
    if unknown:
        raise UserError(f"annotation {CAPACITY_ANNOTATION} names unknown pool(s) {sorted(unknown)}")
    return pool_models_from_plan(spec.pools, caps, prices, spec.serving.max_batch_size)


def settings_from_spec(autoscaling, weights: WorkWeights | None = None) -> Settings:
    """Settings from an api AutoscalingSpec (seconds, $/hour, $/1M tokens)."""
    a = autoscaling
    return Settings(
        interval_s=float(a.interval_seconds),
        stale_after_s=float(a.metrics.stale_after_seconds),
        ttft_p95_s=a.slo.ttft_p95_seconds,
        tpot_p95_s=a.slo.tpot_p95_seconds,
        max_cost_per_million=a.budget.max_cost_per_million_tokens,
        max_hourly_cost=a.budget.max_hourly_cost,
        target_utilization=float(a.target_utilization),
        scale_up_stabilization_s=float(a.scale_up_stabilization_seconds),
        scale_down_stabilization_s=float(a.scale_down_stabilization_seconds),
        scale_to_zero=bool(a.scale_to_zero.enabled),
        idle_s=float(a.scale_to_zero.idle_seconds),
        burst_reserve_s=None if a.burst_reserve_seconds is None else float(a.burst_reserve_seconds),
        weights=weights or WorkWeights(),
    )
