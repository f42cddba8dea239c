"""Self-hosting cost per 1M tokens and the break-even monthly volume against an API price.

A month is 730 hours. Monthly volume N tokens with ``output_fraction`` generated and the prompt at
``cache_hit_ratio`` needs N/(730 x 3600) x (work units per token) work units/s; the fleet is the cheapest
integer pool mix whose capacity x utilization covers it (at least one replica), paid all month.
"""
from __future__ import annotations

import math
from typing import Sequence

from .mix import cheapest_mix, cost_of
from .model import PoolModel, WorkWeights

HOURS_PER_MONTH = 730.0


def work_per_token(weights: WorkWeights, cache_hit_ratio: float, output_fraction: float) -> float:
    prompt = (1 - cache_hit_ratio) * weights.prompt + cache_hit_ratio * weights.cached_prompt
    return (1 - output_fraction) * prompt + output_fraction * weights.generated


def fleet_for(pools: Sequence[PoolModel], weights: WorkWeights, monthly_tokens: float, cache_hit_ratio: float,
              output_fraction: float, utilization: float) -> dict[str, int]:
    """Cheapest replicas per pool serving ``monthly_tokens`` at ``utilization`` (maxReplicas ignored: a what-if)."""
    work = monthly_tokens / (HOURS_PER_MONTH * 3600.0) * work_per_token(weights, cache_hit_ratio, output_fraction)
    need = max(work / utilization, 1e-9)
    upper = {p.name: max(p.max_replicas, math.ceil(need / p.capacity)) for p in pools}
    return cheapest_mix(pools, need, {p.name: 0 for p in pools}, upper) or {}


def monthly_cost(pools, weights, monthly_tokens, cache_hit_ratio, output_fraction, utilization) -> float:
    """$ per month of the fleet for that volume."""
    return (
        cost_of(pools, fleet_for(pools, weights, monthly_tokens, cache_hit_ratio, output_fraction, utilization))
        * HOURS_PER_MONTH
    )


def marginal_cost_per_million(pools, weights, cache_hit_ratio, output_fraction, utilization) -> float:
    """$/1M tokens at large volume (fractional replicas) on the cheapest pool per work unit."""
    best = min(p.price_per_work for p in pools)   # $/hour per work unit/s
    return best / 3600.0 * work_per_token(weights, cache_hit_ratio, output_fraction) / utilization * 1e6


def break_even_tokens(pools, weights, api_per_million: float, cache_hit_ratio, output_fraction, utilization,
                      lo: float = 1e6, hi: float = 1e14) -> float | None:
    """Smallest monthly volume (tokens) from which self-hosting costs no more than the API; None if never."""
    if marginal_cost_per_million(pools, weights, cache_hit_ratio, output_fraction, utilization) > api_per_million:
        return None
    def cheaper(n):
        return (
            monthly_cost(pools, weights, n, cache_hit_ratio, output_fraction, utilization) <= n * api_per_million / 1e6
        )

    grid = [lo * 10 ** (k / 20) for k in range(int(20 * math.log10(hi / lo)) + 1)]
    prev = lo
    for n in grid:
        if cheaper(n):
            if n == lo:
                return lo
            a, b = prev, n
            for _ in range(60):
                mid = math.sqrt(a * b)
                a, b = (a, mid) if cheaper(mid) else (mid, b)
            return b
        prev = n
    return None
