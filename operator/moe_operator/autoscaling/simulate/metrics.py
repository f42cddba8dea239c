"""Figures of one replay beyond cost and SLO attainment: what could be met at all, peak spend, budget breaches.

Pure functions over numbers and the replay's per-second series (``fleet.Replay.series``: tuples of (t s, arrived
work units/s, ready capacity work units/s, {pool: replicas asked for}, cost rate $/h, served work units/s), one
per second). docs/simulate.md, "`--json`", defines each key.

**Attainable requests.** A request is *unattainable* when even an unloaded replica of the best pool for it misses
the SLO: its own prefill there (computed prompt tokens / the pool's prefill tokens/s, plus cached prompt tokens /
the pool's cached-prefill tokens/s where the model charges for them) already exceeds the TTFT target, or the
pool's time per output token with nothing else running exceeds the TPOT target. No policy can meet such a request,
so ``attainableSloAttainment`` (attainment over the other requests) separates what a policy got wrong from what
the trace asks for on this hardware.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..model import PoolModel
from .serving import ServingProfile

# fleet.py's TPOT is tpot_at_capacity x utilisation clamped to [FLUID_MIN_LOAD, 1]: an unloaded replica of the
# fluid model still pays FLUID_MIN_LOAD of its full-load TPOT (a decode step never gets cheaper than streaming the
# weights). tests/autoscaling/test_simulate_metrics.py checks the two agree on an idle fleet.
FLUID_MIN_LOAD = 0.3


def attainable(prompt: np.ndarray, cached: np.ndarray, ttft_target_s: float | None, tpot_target_s: float | None,
               prefill_tps: Sequence[float], unloaded_tpot_s: Sequence[float],
               cached_prefill_tps: Sequence[float] | None = None, output: np.ndarray | None = None,
               ttft_overhead_s: Sequence[float] | None = None) -> np.ndarray:
    """Per request: True when some pool, unloaded, meets both targets for it (module docstring).

    ``prompt``/``cached``: computed and cached prompt tokens per request. Per pool (same order in every sequence):
    ``prefill_tps`` computed prompt tokens/s of one replica (<= 0: prefill not modelled, free), ``unloaded_tpot_s``
    seconds per output token of a replica running this request alone, ``cached_prefill_tps`` prefix-cache tokens/s
    (None: cached tokens cost no time, as in the fluid model). ``output``: generated tokens per request, given
    when the model has no TPOT for a request of at most one output token (the replica model); None: every request
    has one (the fluid model). ``ttft_overhead_s``: per pool, latency every first token pays outside the engine
    (None: none). A target of None is no limit."""
    prompt = np.asarray(prompt, dtype=float)
    cached = np.asarray(cached, dtype=float)
    ttft = np.inf if ttft_target_s is None else float(ttft_target_s)
    tpot = np.inf if tpot_target_s is None else float(tpot_target_s)
    ok = np.zeros(len(prompt), dtype=bool)
    rates = list(prefill_tps)
    if len(unloaded_tpot_s) != len(rates) or (cached_prefill_tps is not None and len(cached_prefill_tps) != len(rates)):
        raise ValueError("prefill_tps, unloaded_tpot_s and cached_prefill_tps need one entry per pool")
    no_tpot = np.zeros(len(prompt), dtype=bool) if output is None else np.asarray(output, dtype=float) <= 1
    for i, rate in enumerate(rates):
        own = prompt / rate if rate > 0 else np.zeros(len(prompt))
        if cached_prefill_tps is not None and cached_prefill_tps[i] > 0:
            own = own + cached / cached_prefill_tps[i]
        if ttft_overhead_s is not None:
            own = own + ttft_overhead_s[i]
        ok |= (own <= ttft) & (no_tpot | (unloaded_tpot_s[i] <= tpot))
    return ok


def attainable_fluid(prompt: np.ndarray, cached: np.ndarray, pools: Sequence[PoolModel], ttft_target_s: float | None,
                     tpot_target_s: float | None) -> np.ndarray:
    """``attainable`` for the fluid queueing model (fleet.py): prefill at the pool's prefill_tps, cached tokens
    free, unloaded TPOT = FLUID_MIN_LOAD x tpot_at_capacity_s."""
    return attainable(prompt, cached, ttft_target_s, tpot_target_s, [p.prefill_tps for p in pools],
                      [FLUID_MIN_LOAD * p.tpot_at_capacity_s for p in pools])


def attainable_replica(prompt: np.ndarray, cached: np.ndarray, output: np.ndarray, pools: Sequence[PoolModel],
                       profiles: Mapping[str, ServingProfile], ttft_target_s: float | None,
                       tpot_target_s: float | None) -> np.ndarray:
    """``attainable`` for the per-replica model (replicas.py): an idle replica prefills a lone prompt at full
    speed (``ServingProfile.prefill_s``: computed and cached tokens at their own rates), its first token comes at
    the end of that prefill (plus the profile's ``ttft_overhead_s``), and it then decodes alone at ``step_s(1)`` per
    token; a request of at most one output token has no TPOT."""
    profs = [profiles[p.name] for p in pools]
    return attainable(prompt, cached, ttft_target_s, tpot_target_s, [q.prefill_tps for q in profs],
                      [q.step_s(1) for q in profs], [q.cached_prefill_tps for q in profs], output=output,
                      ttft_overhead_s=[q.ttft_overhead_s for q in profs])


def attainment_over(met: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of the requests in ``mask`` whose SLO was met (1.0 when there are none, like sloAttainment)."""
    n = int(mask.sum())
    return float(met[mask].sum()) / n if n else 1.0


def asked_cost_rate(series: Sequence[tuple], pools: Sequence[PoolModel]) -> np.ndarray:
    """$/h per second of the replicas asked for (ready or starting): what a policy decides and maxHourlyCost
    limits. Replicas the per-replica model keeps draining after a scale-down are paid too (in the series' cost
    column and the total cost) but are not asked for."""
    price = {p.name: p.price_per_hour for p in pools}
    return np.array([sum(n * price.get(k, 0.0) for k, n in s[3].items()) for s in series], dtype=float)


def peak_hourly_cost(rates: np.ndarray) -> float:
    """$/h: the highest of ``rates`` (``asked_cost_rate``, or the series' paid cost column)."""
    return float(np.max(rates)) if len(rates) else 0.0


def budget_violation_seconds(rates: np.ndarray, max_hourly_cost: float | None, dt: float = 1.0) -> float:
    """Seconds whose cost rate (``asked_cost_rate``) exceeded ``max_hourly_cost`` (0 without a budget)."""
    if max_hourly_cost is None:
        return 0.0
    limit = max_hourly_cost * (1 + 1e-9) + 1e-9
    return dt * float(np.count_nonzero(np.asarray(rates) > limit))


def floor_cost_rate(pools: Sequence[PoolModel], keep_one: bool = True) -> float:
    """$/h of the smallest fleet the spec allows: every pool's minReplicas, and (unless scale to zero) at least one
    replica of the cheapest pool when the minimums add up to none."""
    rate = sum(p.min_replicas * p.price_per_hour for p in pools)
    if keep_one and not any(p.min_replicas for p in pools) and pools:
        rate += min(p.price_per_hour for p in pools)
    return rate


def cost_per_million_violation_seconds(series: Sequence[tuple], limit: float | None, interval_s: float,
                                       tokens_per_work: float, floor_rate: float, dt: float = 1.0) -> float | None:
    """Seconds of decision intervals in which the fleet cost more per 1M tokens than ``limit`` at the demand it
    observed, while running above its floor (None without a limit).

    Per interval of ``interval_s`` (aligned at 0, as the decisions): $/1M = the interval's cost x 1e6 / tokens
    served in it (served work units x ``tokens_per_work``; infinite when none). Intervals whose mean cost rate is
    at most ``floor_rate`` (the smallest fleet the spec allows, ``floor_cost_rate``) do not count: below that no
    policy can go, so low traffic alone is not a breach."""
    if limit is None:
        return None
    if not series:
        return 0.0
    t = np.array([s[0] for s in series], dtype=float)
    rate = np.array([s[4] for s in series], dtype=float)
    served = np.array([s[5] for s in series], dtype=float)
    k = (t // interval_s).astype(int)
    n = np.bincount(k)
    cost = np.bincount(k, weights=rate) * dt / 3600.0
    tokens = np.bincount(k, weights=served) * dt * tokens_per_work
    mean_rate = np.divide(np.bincount(k, weights=rate), n, out=np.zeros(len(n)), where=n > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cpm = np.where(tokens > 0, cost * 1e6 / np.where(tokens > 0, tokens, 1.0), np.inf)
    over = (n > 0) & (mean_rate > floor_rate * (1 + 1e-9) + 1e-9) & (cpm > limit)
    return float(n[over].sum() * dt)
