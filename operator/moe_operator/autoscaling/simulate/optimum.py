"""Offline optimum: perfect knowledge of the future, no cold start, solved with scipy's HiGHS.

Per interval k the fleet needs capacity >= D_k work units/s. Minimise sum_k sum_i price_i x n_ki x
interval/3600 over integers min_i <= n_ki <= max_i (MILP, scipy.optimize.milp). Two demands:
  * ``peak``: the highest arrival work rate over any ``window_s`` window inside the interval (what a
    schedule must cover for queues to stay short): this schedule is replayed and is "the optimum";
  * ``mean``: the interval's average arrival rate, LP relaxation (scipy.optimize.linprog): a strict lower
    bound on the cost of serving the trace without queueing across intervals.
Unless ``keep_one`` is False (scale to zero allowed) every interval keeps at least one replica, as the policy does.

``max_hourly_cost`` (spec budget.maxHourlyCost) is a hard constraint, as it is for the policy: in every interval
the replicas asked for (paid, starting ones included) cost at most that many $/h (one row per interval). Where
demand cannot be met within it, met demand comes first, then cost: each interval's demand is capped at W, the
widest capacity any integer mix within the budget (and within min/maxReplicas) reaches (a small knapsack MILP).
That is exact, not a penalty: no schedule serves more than W in any interval, and holding the widest mix in every
interval is feasible, with or without cold starts, so every interval gets its most met demand at once and the
solve then minimises cost. The demand left above W is reported (``Optimum.unmet_work``). The budget wins over
minReplicas, as in the policy: if the minimums alone cost more, they are dropped. Without a budget nothing changes.
With a budget that binds, the LP bound is on the same capped demand (still below the MILP's cost).

``max_cost_per_million`` (spec budget.maxCostPerMillionTokens) is the same kind of cap, per interval, at the
interval's arriving demand D_j (tokens/s, prompt + cached + generated, by arrival), as the policy applies it
(limits.py): $/h <= limit x D_j x 3600 / 1e6, never below the cheapest allowed fleet (minReplicas, and one
replica of the cheapest pool unless scale to zero). With both budgets the lower cap binds. Knowing the future
does not lift it: a replica asked for ahead of a burst is paid in intervals whose own demand allows less, so the
reference, like the policy, meets a burst only with what the cap of the intervals before it pays for.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from ..model import PoolModel
from .metrics import floor_cost_rate


def _per_second(arrival_s: np.ndarray, weights: np.ndarray, horizon_s: float) -> np.ndarray:
    """``weights`` summed per second of arrival over [0, horizon]; arrivals past the horizon drop out."""
    seconds = int(np.ceil(horizon_s)) + 1
    return np.bincount(np.floor(arrival_s).astype(int), weights=weights, minlength=seconds)[:seconds]


def _spans(intervals: int, interval_s: float, seconds: int):
    """(first, end) second of each interval, as both the demands and the budgets count them."""
    return [(int(j * interval_s), int(min(seconds, (j + 1) * interval_s))) for j in range(intervals)]


def interval_demands(arrival_s: np.ndarray, work: np.ndarray, interval_s: float, window_s: float,
                     horizon_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(peak, mean) arrival work rates per interval, work units/s."""
    per_s = _per_second(arrival_s, work, horizon_s)
    w = max(1, int(window_s))
    rolling = np.convolve(per_s, np.ones(w) / w, mode="full")[: len(per_s)]
    spans = _spans(int(np.ceil(len(per_s) / interval_s)), interval_s, len(per_s))
    peak = np.array([rolling[a:b].max() if b > a else 0.0 for a, b in spans])
    mean = np.array([per_s[a:b].sum() / interval_s for a, b in spans])
    return peak, mean


@dataclass(frozen=True)
class Optimum:
    plan: list[dict[str, int]]   # replicas per pool per interval
    cost: float                  # $ of the MILP schedule
    lp_bound: float              # $ LP relaxation on mean demand (lower bound)
    status: str
    peak_hourly_cost: float = 0.0   # $/h, the schedule's most expensive interval (replicas asked for)
    unmet_work: float = 0.0         # work units of peak demand left without capacity (budget, or maxReplicas)


def widest_within(pools: list[PoolModel], budget: float, lower: np.ndarray) -> float:
    """Work units/s of the widest integer mix with price . n <= ``budget`` $/h and ``lower`` <= n <= maxReplicas
    (0 when even ``lower`` costs more)."""
    price = np.array([p.price_per_hour for p in pools], dtype=float)
    cap = np.array([p.capacity for p in pools], dtype=float)
    budget = budget * (1 + 1e-9) + 1e-12      # a sum of the same prices in another order may differ by an ulp
    if float(lower @ price) > budget:
        return 0.0
    res = milp(-cap, constraints=LinearConstraint(price.reshape(1, -1), lb=-np.inf, ub=budget),
               integrality=np.ones(len(pools)), bounds=Bounds(lower, [p.max_replicas for p in pools]))
    return float(-res.fun) if res.x is not None else 0.0


def interval_budgets(pools: list[PoolModel], arrival_s: np.ndarray, tokens: np.ndarray | None, intervals: int,
                     interval_s: float, max_hourly_cost: float | None, max_cost_per_million: float | None,
                     keep_one: bool = True, horizon_s: float | None = None) -> np.ndarray | None:
    """$/h cap per interval from the two budgets (module docstring), None without either. Tokens are counted per
    second of arrival and per interval as ``interval_demands`` counts work (arrivals past the horizon drop out).
    The $/1M cap is rounded down to the cent per hour: never above the cap, and few distinct budgets to size."""
    if max_hourly_cost is None and max_cost_per_million is None:
        return None
    budget = np.full(intervals, np.inf if max_hourly_cost is None else float(max_hourly_cost))
    if max_cost_per_million is not None:
        if tokens is None:
            raise ValueError("max_cost_per_million needs the requests' tokens")
        tokens = np.asarray(tokens, dtype=float)
        if len(tokens) != len(arrival_s) or not np.isfinite(tokens).all() or (tokens < 0).any():
            raise ValueError("tokens must be one finite, non-negative count per request")
        arrival_s = np.asarray(arrival_s, dtype=float)
        horizon = float(horizon_s if horizon_s is not None else (arrival_s.max() if len(arrival_s) else 0.0))
        per_s = _per_second(arrival_s, tokens, horizon)
        tps = np.array([per_s[a:b].sum() / interval_s for a, b in _spans(intervals, interval_s, len(per_s))])
        cpm = np.floor(max_cost_per_million * tps * 3600.0 / 1e6 * 100.0) / 100.0
        budget = np.minimum(budget, np.maximum(cpm, floor_cost_rate(pools, keep_one)))
    return budget


@lru_cache(maxsize=4096)
def _widest_cached(pools: tuple, budget: float, lower: tuple) -> float:
    return widest_within(list(pools), budget, np.array(lower, dtype=float))


def _solve(pools: list[PoolModel], demand: np.ndarray, interval_s: float, integral: bool, keep_one: bool = True,
           cold_start: bool = False, max_hourly_cost: float | np.ndarray | None = None):
    """(replicas paid [interval, pool], $ cost, solver message, demand served [interval] work units/s) covering
    ``demand`` (work units/s per interval), capped at what maxReplicas and the budget allow.

    Variables per interval j and pool i: x (asked for, paid; index j * m + i). Without ``cold_start`` x also serves.
    With it a second block y (ready, free; index k * m + j * m + i) serves, and a replica serves in interval j only
    if it was asked for without a break since interval j - L, L = ceil(cold start / interval): y_j <= x_b for every
    b in [j - L, j] (at the start the fleet is warm, as in the replay). With ``max_hourly_cost`` one row per
    interval holds price . x_j <= budget and the demand is capped at ``widest_within`` (module docstring). The
    constraint matrix is sparse: its nonzeros grow linearly with intervals x pools x lead, not quadratically."""
    k, m = len(demand), len(pools)
    nx = k * m
    price_h = np.array([p.price_per_hour for p in pools], dtype=float)
    price = price_h * interval_s / 3600.0
    cap = np.array([p.capacity for p in pools])
    mins = np.array([p.min_replicas for p in pools], dtype=float)
    need = np.minimum(demand, cap @ np.array([p.max_replicas for p in pools]))  # infeasible peaks: cap at max
    if keep_one:  # like the policy without scale to zero: at least one replica in every interval
        need = np.maximum(need, cap.min())
    budget = None if max_hourly_cost is None else np.broadcast_to(np.asarray(max_hourly_cost, dtype=float), (k,))
    if budget is not None:
        # the budget wins over minReplicas (a relative tolerance: the $/1M cap's floor is the same sum, added up
        # in another order)
        if float(mins @ price_h) > float(budget.min()) * (1 + 1e-9) + 1e-12:
            mins = np.zeros(m)
        widest = {b: _widest_cached(tuple(pools), float(b), tuple(mins)) if np.isfinite(b) else np.inf
                  for b in np.unique(budget)}
        need = np.minimum(need, np.array([widest[b] for b in budget]))
    # A cap that changes from interval to interval (maxCostPerMillionTokens) can make the capped demand unreachable:
    # a replica serving in interval j was paid since j - L, under those intervals' lower caps. Then each interval
    # gets a shortfall variable s_j >= 0 (capacity + s_j >= need_j), solved in two passes: the least total
    # shortfall first, then the cheapest schedule with no more than that (met demand first, then cost, exactly).
    soft = budget is not None and float(np.ptp(budget)) > 0
    serve = nx if cold_start else 0     # first index of the variables whose capacity counts
    n0 = 2 * nx if cold_start else nx
    n = n0 + (k if soft else 0)
    rows, cols, vals = [np.repeat(np.arange(k), m)], [serve + np.arange(nx)], [np.tile(cap, k)]
    if soft:
        rows.append(np.arange(k))
        cols.append(n0 + np.arange(k))
        vals.append(np.ones(k))
    lb, ub = [need], [np.full(k, np.inf)]
    nrow = k
    if cold_start:                      # y_{j,i} <= x_{j-back,i}: one row per (interval, pool, back)
        lead = [int(np.ceil(p.cold_start_s / interval_s - 1e-9)) for p in pools]
        link = [(j, i, back) for j in range(k) for i in range(m) for back in range(min(lead[i], j) + 1)]
        j, i, back = (np.array(t, dtype=int) for t in zip(*link))
        row = nrow + np.arange(len(link))
        rows += [row, row]
        cols += [(j - back) * m + i, nx + j * m + i]
        vals += [np.ones(len(link)), -np.ones(len(link))]
        lb.append(np.zeros(len(link)))
        ub.append(np.full(len(link), np.inf))
        nrow += len(link)
    if budget is not None:              # price . x_j <= budget_j ($/h)
        rows.append(np.repeat(nrow + np.arange(k), m))
        cols.append(np.arange(nx))
        vals.append(np.tile(price_h, k))
        lb.append(np.full(k, -np.inf))
        ub.append(np.array(budget, dtype=float))
        nrow += k
    lb, ub = np.concatenate(lb), np.concatenate(ub)
    A = sparse.csr_array((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(nrow, n))
    c = np.concatenate([np.tile(price, k), np.zeros(n - nx)])
    lo = np.concatenate([np.tile(mins, k), np.zeros(n - nx)])
    hi = np.concatenate([np.tile([p.max_replicas for p in pools], n0 // m).astype(float), np.full(n - n0, np.inf)])
    integrality = np.concatenate([np.full(n0, 1 if integral else 0), np.zeros(n - n0)])

    def run(obj, A, lb, ub):
        if integral or soft:
            return milp(obj, constraints=LinearConstraint(A, lb=lb, ub=ub), integrality=integrality,
                        bounds=Bounds(lo, hi), options={"time_limit": 60})
        lower, upper = np.flatnonzero(np.isfinite(lb)), np.flatnonzero(np.isfinite(ub))
        return linprog(obj, A_ub=sparse.vstack([-A[lower], A[upper]]).tocsr(),
                       b_ub=np.concatenate([-lb[lower], ub[upper]]), bounds=list(zip(lo, hi)), method="highs")

    short = np.zeros(k)
    if soft:                            # pass 1: the least shortfall; pass 2 below keeps it and minimises cost
        first = run(np.concatenate([np.zeros(n0), np.ones(k)]), A, lb, ub)
        if first.x is None:
            raise RuntimeError(f"HiGHS found no schedule{' with cold starts' if cold_start else ''}: {first.message}")
        least = float(first.fun)
        A = sparse.vstack([A, sparse.csr_array((np.ones(k), (np.zeros(k, dtype=int), n0 + np.arange(k))),
                                               shape=(1, n))]).tocsr()
        lb, ub = np.append(lb, -np.inf), np.append(ub, least * (1 + 1e-7) + 1e-6)
    res = run(c, A, lb, ub)
    if res.x is None:
        raise RuntimeError(f"HiGHS found no schedule{' with cold starts' if cold_start else ''}: {res.message}")
    if soft:
        short = np.clip(res.x[n0:], 0.0, None)
    return res.x[:nx].reshape(k, m), float(res.fun), str(res.message), np.clip(need - short, 0.0, None)


def offline_optimum(pools: list[PoolModel], arrival_s: np.ndarray, work: np.ndarray, interval_s: float,
                    window_s: float = 10.0, horizon_s: float | None = None, keep_one: bool = True,
                    cold_start: bool = False, max_hourly_cost: float | None = None,
                    max_cost_per_million: float | None = None, tokens: np.ndarray | None = None) -> Optimum:
    """The MILP schedule on peak demand and the LP bound on mean demand (module docstring).

    ``cold_start``: a second reference, not the target's: perfect knowledge of the future but every replica pays
    its cold start (asked for, and paid, cold-start seconds before it serves). Its gap to the plain optimum is the
    cost of cold starts; a policy's gap to it is the cost of not knowing the future. Same demand per interval.
    ``max_hourly_cost``: the spec's maxHourlyCost, a hard limit on every interval's replicas asked for (module
    docstring); the LP bound honours it too. ``max_cost_per_million`` with ``tokens`` (per request, prompt + cached
    + generated): the spec's maxCostPerMillionTokens, a cap per interval at its arriving tokens/s (module
    docstring)."""
    horizon = float(horizon_s if horizon_s is not None else (arrival_s[-1] if len(arrival_s) else 0.0))
    peak, mean = interval_demands(arrival_s, work, interval_s, window_s, horizon)
    budget = interval_budgets(pools, arrival_s, tokens, len(peak), interval_s, max_hourly_cost, max_cost_per_million,
                              keep_one, horizon)
    x, cost, status, covered = _solve(pools, peak, interval_s, integral=True, keep_one=keep_one, cold_start=cold_start,
                                      max_hourly_cost=budget)
    _, bound, _, _ = _solve(pools, mean, interval_s, integral=False, keep_one=keep_one, max_hourly_cost=budget)
    plan = [{p.name: int(round(x[j, i])) for i, p in enumerate(pools)} for j in range(len(peak))]
    unmet = float((peak - covered).clip(min=0).sum() * interval_s)   # peak demand above maxReplicas or the budget
    peak_rate = max((sum(step[p.name] * p.price_per_hour for p in pools) for step in plan), default=0.0)
    return Optimum(plan, cost, bound, status, peak_hourly_cost=float(peak_rate), unmet_work=unmet)


def clairvoyant_cold_start(pools: list[PoolModel], arrival_s: np.ndarray, work: np.ndarray, interval_s: float,
                           window_s: float = 10.0, horizon_s: float | None = None, keep_one: bool = True,
                           max_hourly_cost: float | None = None, max_cost_per_million: float | None = None,
                           tokens: np.ndarray | None = None) -> Optimum:
    """``offline_optimum(..., cold_start=True)`` (the name the simulator and the benchmark docs use)."""
    return offline_optimum(pools, arrival_s, work, interval_s, window_s, horizon_s, keep_one, cold_start=True,
                           max_hourly_cost=max_hourly_cost, max_cost_per_million=max_cost_per_million, tokens=tokens)
