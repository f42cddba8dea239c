"""Offline optimum: perfect knowledge of the future, no cold start, solved with scipy's HiGHS.

Per interval k the fleet needs capacity >= D_k work units/s. Minimise sum_k sum_i price_i x n_ki x
interval/3600 over integers min_i <= n_ki <= max_i (MILP, scipy.optimize.milp). Two demands:
  * ``peak``: the highest arrival work rate over any ``window_s`` window inside the interval (what a
    schedule must cover for queues to stay short): this schedule is replayed and is "the optimum";
  * ``mean``: the interval's average arrival rate, LP relaxation (scipy.optimize.linprog): a strict lower
    bound on the cost of serving the trace without queueing across intervals.
Unless ``keep_one`` is False (scale to zero allowed) every interval keeps at least one replica, as the policy does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from ..model import PoolModel


def interval_demands(arrival_s: np.ndarray, work: np.ndarray, interval_s: float, window_s: float,
                     horizon_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(peak, mean) arrival work rates per interval, work units/s."""
    seconds = int(np.ceil(horizon_s)) + 1
    per_s = np.bincount(np.floor(arrival_s).astype(int), weights=work, minlength=seconds)[:seconds]
    w = max(1, int(window_s))
    rolling = np.convolve(per_s, np.ones(w) / w, mode="full")[: len(per_s)]
    k = int(np.ceil(seconds / interval_s))
    peak, mean = np.zeros(k), np.zeros(k)
    for j in range(k):
        a, b = int(j * interval_s), int(min(seconds, (j + 1) * interval_s))
        peak[j] = rolling[a:b].max() if b > a else 0.0
        mean[j] = per_s[a:b].sum() / interval_s
    return peak, mean


@dataclass(frozen=True)
class Optimum:
    plan: list[dict[str, int]]   # replicas per pool per interval
    cost: float                  # $ of the MILP schedule
    lp_bound: float              # $ LP relaxation on mean demand (lower bound)
    status: str


def _solve(pools: list[PoolModel], demand: np.ndarray, interval_s: float, integral: bool, keep_one: bool = True):
    k, m = len(demand), len(pools)
    price = np.array([p.price_per_hour for p in pools]) * interval_s / 3600.0
    cap = np.array([p.capacity for p in pools])
    c = np.tile(price, k)
    A = np.zeros((k, k * m))
    for j in range(k):
        A[j, j * m:(j + 1) * m] = cap
    lo = np.tile([p.min_replicas for p in pools], k).astype(float)
    hi = np.tile([p.max_replicas for p in pools], k).astype(float)
    need = np.minimum(demand, cap @ np.array([p.max_replicas for p in pools]))  # infeasible peaks: cap at max
    if keep_one:  # like the policy without scale to zero: at least one replica in every interval
        need = np.maximum(need, cap.min())
    if integral:
        res = milp(c, constraints=LinearConstraint(A, lb=need, ub=np.inf), integrality=np.ones(k * m),
                   bounds=Bounds(lo, hi), options={"time_limit": 60})
    else:
        res = linprog(c, A_ub=-A, b_ub=-need, bounds=list(zip(lo, hi)), method="highs")
    if res.x is None:
        raise RuntimeError(f"HiGHS found no schedule: {res.message}")
    return res.x.reshape(k, m), float(res.fun), str(res.message)


def offline_optimum(pools: list[PoolModel], arrival_s: np.ndarray, work: np.ndarray, interval_s: float,
                    window_s: float = 10.0, horizon_s: float | None = None, keep_one: bool = True) -> Optimum:
    horizon = float(horizon_s if horizon_s is not None else (arrival_s[-1] if len(arrival_s) else 0.0))
    peak, mean = interval_demands(arrival_s, work, interval_s, window_s, horizon)
    x, cost, status = _solve(pools, peak, interval_s, integral=True, keep_one=keep_one)
    _, bound, _ = _solve(pools, mean, interval_s, integral=False, keep_one=keep_one)
    plan = [{p.name: int(round(x[j, i])) for i, p in enumerate(pools)} for j in range(len(peak))]
    return Optimum(plan, cost, bound, status)


def _solve_lead(pools: list[PoolModel], demand: np.ndarray, interval_s: float, keep_one: bool = True):
    """MILP with start lead time: a replica serves in interval k only if it was asked for (and paid) without a
    break since interval k - L, L = ceil(cold start / interval). Variables per interval and pool: x (asked,
    paid) and y (ready); y_k <= x_j for every j in [k - L, k] (at the start the fleet is warm, as in the replay)."""
    k, m = len(demand), len(pools)
    n = 2 * k * m                       # x then y, index (j, i) -> j * m + i
    price = np.array([p.price_per_hour for p in pools]) * interval_s / 3600.0
    cap = np.array([p.capacity for p in pools])
    c = np.concatenate([np.tile(price, k), np.zeros(k * m)])
    need = np.minimum(demand, cap @ np.array([p.max_replicas for p in pools]))
    if keep_one:
        need = np.maximum(need, cap.min())
    rows, lb = [], []
    for j in range(k):                  # capacity of the ready replicas covers the interval's demand
        r = np.zeros(n)
        r[k * m + j * m: k * m + (j + 1) * m] = cap
        rows.append(r)
        lb.append(need[j])
    lead = [int(np.ceil(p.cold_start_s / interval_s - 1e-9)) for p in pools]
    for j in range(k):
        for i in range(m):
            for back in range(0, lead[i] + 1):
                if j - back < 0:
                    break
                r = np.zeros(n)
                r[(j - back) * m + i] = 1.0
                r[k * m + j * m + i] = -1.0
                rows.append(r)
                lb.append(0.0)
    lo = np.concatenate([np.tile([p.min_replicas for p in pools], k), np.zeros(k * m)]).astype(float)
    hi = np.tile([p.max_replicas for p in pools], 2 * k).astype(float)
    res = milp(c, constraints=LinearConstraint(np.array(rows), lb=np.array(lb), ub=np.inf), integrality=np.ones(n),
               bounds=Bounds(lo, hi), options={"time_limit": 60})
    if res.x is None:
        raise RuntimeError(f"HiGHS found no schedule with cold starts: {res.message}")
    return res.x[: k * m].reshape(k, m), float(res.fun), str(res.message)


def clairvoyant_cold_start(pools: list[PoolModel], arrival_s: np.ndarray, work: np.ndarray, interval_s: float,
                           window_s: float = 10.0, horizon_s: float | None = None, keep_one: bool = True) -> Optimum:
    """A second reference, not the target's: perfect knowledge of the future but every replica pays its cold start
    (asked for, and paid, cold-start seconds before it serves). Its gap to ``offline_optimum`` is the cost of cold
    starts; a policy's gap to it is the cost of not knowing the future. Same demand per interval as the optimum."""
    horizon = float(horizon_s if horizon_s is not None else (arrival_s[-1] if len(arrival_s) else 0.0))
    peak, mean = interval_demands(arrival_s, work, interval_s, window_s, horizon)
    x, cost, status = _solve_lead(pools, peak, interval_s, keep_one=keep_one)
    _, bound, _ = _solve(pools, mean, interval_s, integral=False, keep_one=keep_one)
    plan = [{p.name: int(round(x[j, i])) for i, p in enumerate(pools)} for j in range(len(peak))]
    return Optimum(plan, cost, bound, status)
