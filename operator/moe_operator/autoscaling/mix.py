"""Exact search over pool mixes: integer replicas per pool, cheapest first.

Pools are few (one per accelerator type), so a depth-first search with cost pruning finds the exact
integer optimum where a greedy "cheapest $/capacity first" would round badly (a big cheap replica
where a small one suffices). Capacities are work units/s per replica, prices $/hour per replica.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from .model import PoolModel

EPS = 1e-9


def capacity_of(
    pools: Sequence[PoolModel], replicas: Mapping[str, int], factors: Mapping[str, float] | None = None
) -> float:
    """Work units/s of a mix, each pool's capacity scaled by its correction factor."""
    f = factors or {}
    return sum(replicas.get(p.name, 0) * p.capacity * f.get(p.name, 1.0) for p in pools)


def cost_of(pools: Sequence[PoolModel], replicas: Mapping[str, int]) -> float:
    """$/hour of a mix."""
    return sum(replicas.get(p.name, 0) * p.price_per_hour for p in pools)


def _replicas_for(work: float, capacity: float) -> int:
    """Smallest n with n * capacity >= work, tolerant of float noise."""
    return 0 if work <= 0 else math.ceil(work / capacity * (1 - EPS))


def cheapest_mix(pools: Sequence[PoolModel], need: float, lower: Mapping[str, int], upper: Mapping[str, int],
                 factors: Mapping[str, float] | None = None, budget: float | None = None) -> dict[str, int] | None:
    """Cheapest integer mix with capacity >= need (work units/s), lower <= n <= upper, cost <= budget.

    Returns None when no mix within the bounds and budget reaches ``need``. Ties go to more capacity.
    """
    f = factors or {}
    caps = [p.capacity * f.get(p.name, 1.0) for p in pools]
    order = sorted(range(len(pools)), key=lambda i: pools[i].price_per_hour / max(caps[i], EPS))
    best: list = [math.inf, -math.inf, None]  # cost, capacity, mix

    def dfs(k: int, remaining: float, cost: float, cap: float, chosen: dict[str, int]):
        if cost > best[0] + EPS:
            return
        if k == len(order):
            if remaining <= EPS * need and (budget is None or cost <= budget + EPS):
                if cost < best[0] - EPS or (abs(cost - best[0]) <= EPS and cap > best[1]):
                    best[:] = [cost, cap, dict(chosen)]
            return
        i = order[k]
        p, c = pools[i], caps[i]
        lo, hi = lower.get(p.name, 0), upper.get(p.name, 0)
        if lo > hi:
            return
        top = hi if c <= 0 else min(hi, lo + _replicas_for(remaining, c))
        if k == len(order) - 1:
            n = max(lo, _replicas_for(remaining, c)) if c > 0 else lo
            candidates = [n] if n <= hi else []
        else:
            candidates = range(lo, top + 1)
        for n in candidates:
            chosen[p.name] = n
            dfs(k + 1, remaining - n * c, cost + n * p.price_per_hour, cap + n * c, chosen)
        chosen.pop(p.name, None)

    dfs(0, need, 0.0, 0.0, {})
    return best[2]


def widest_mix(pools: Sequence[PoolModel], lower: Mapping[str, int], upper: Mapping[str, int], budget: float,
               factors: Mapping[str, float] | None = None) -> dict[str, int] | None:
    """Mix with the most capacity whose cost stays <= budget ($/hour); ties go to the cheaper one.

    Used when the budget binds. None when even ``lower`` costs more than the budget.
    """
    f = factors or {}
    best: list = [-math.inf, math.inf, None]

    def dfs(k: int, left: float, cap: float, cost: float, chosen: dict[str, int]):
        if k == len(pools):
            if cap > best[0] + EPS or (abs(cap - best[0]) <= EPS and cost < best[1]):
                best[:] = [cap, cost, dict(chosen)]
            return
        p = pools[k]
        lo, hi = lower.get(p.name, 0), upper.get(p.name, 0)
        affordable = hi if p.price_per_hour <= 0 else min(hi, int(math.floor(left / p.price_per_hour + EPS)))
        for n in range(affordable, lo - 1, -1):
            chosen[p.name] = n
            dfs(k + 1, left - n * p.price_per_hour, cap + n * p.capacity * f.get(p.name, 1.0),
                cost + n * p.price_per_hour, chosen)
        chosen.pop(p.name, None)

    dfs(0, budget, 0.0, 0.0, {})
    return best[2]
