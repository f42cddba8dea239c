"""Limits applied around the policy's cost search: bounds, stabilization windows, budget, $/1M ceiling.

Units: needs are work units/s (see model.py), costs $/hour, times Unix seconds.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from .model import PoolModel, Settings


def clamp_to_bounds(pools: Sequence[PoolModel], replicas: Mapping[str, int]) -> dict[str, int]:
    """Per-pool minReplicas <= n <= maxReplicas."""
    return {p.name: min(p.max_replicas, max(p.min_replicas, int(replicas.get(p.name, 0)))) for p in pools}


def window_needs(needs: Sequence[tuple[float, float]], now: float, up_s: float, down_s: float) -> tuple[float, float]:
    """(need to scale up to, need to scale down to) from the (time, need) history, HPA-style.

    Scale up only to the lowest need of the last ``up_s`` seconds (a spike must last to count) and
    scale down only to the highest need of the last ``down_s`` seconds (a dip must last to count).
    ``needs`` must include the current sample.
    """
    up = [n for t, n in needs if now - t <= up_s + 1e-9]
    down = [n for t, n in needs if now - t <= down_s + 1e-9]
    return min(up), max(down)


def enforce_budget(pools: Sequence[PoolModel], replicas: Mapping[str, int], max_hourly_cost: float | None,
                   factors: Mapping[str, float] | None = None) -> dict[str, int]:
    """Drop replicas, most expensive per work unit first, until the mix costs <= max_hourly_cost ($/hour).

    The hourly budget is a hard limit: it wins over minReplicas.
    """
    out = {p.name: int(replicas.get(p.name, 0)) for p in pools}
    if max_hourly_cost is None:
        return out
    f = factors or {}
    by_cost = sorted(pools, key=lambda p: p.price_per_hour / (p.capacity * f.get(p.name, 1.0)), reverse=True)
    while sum(out[p.name] * p.price_per_hour for p in pools) > max_hourly_cost + 1e-9:
        for p in by_cost:
            if out[p.name] > 0 and p.price_per_hour > 0:
                out[p.name] -= 1
                break
        else:
            break
    return out


def pool_cost_per_million(pool: PoolModel, factor: float, settings: Settings, tokens_per_work: float) -> float:
    """$ per 1M tokens of one replica of ``pool`` busy at targetUtilization with the current token mix.

    tokens_per_work: tokens (all kinds) per work unit in the observed demand.
    """
    tokens_per_hour = pool.capacity * factor * settings.target_utilization * tokens_per_work * 3600.0
    return float("inf") if tokens_per_hour <= 0 else pool.price_per_hour * 1e6 / tokens_per_hour


def refused_pools(pools: Sequence[PoolModel], factors: Mapping[str, float], settings: Settings,
                  tokens_per_work: float | None) -> dict[str, float]:
    """Pools whose marginal replica would break maxCostPerMillionTokens: name -> that replica's $/1M."""
    limit = settings.max_cost_per_million
    if limit is None or not tokens_per_work:
        return {}
    out = {}
    for p in pools:
        c = pool_cost_per_million(p, factors.get(p.name, 1.0), settings, tokens_per_work)
        if c > limit + 1e-12:
            out[p.name] = c
    return out
