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
from scipy import sparse
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


def _solve(pools: list[PoolModel], demand: np.ndarray, interval_s: float, integral: bool, keep_one: bool = True,
           cold_start: bool = False):
    """(replicas paid [interval, pool], $ cost, solver message) covering ``demand`` (work units/s per interval).

    Variables per interval j and pool i: x (asked for, paid; index j * m + i). Without ``cold_start`` x also serves.
    With it a second block y (ready, free; index k * m + j * m + i) serves, and a replica serves in interval j only
    if it was asked for without a break since interval j - L, L = ceil(cold start / interval): y_j <= x_b for every
    b in [j - L, j] (at the start the fleet is warm, as in the replay). The constraint matrix is sparse: its
    nonzeros grow linearly with intervals x pools x lead, not quadratically."""
    k, m = len(demand), len(pools)
    nx = k * m
    price = np.array([p.price_per_hour for p in pools]) * interval_s / 3600.0
    cap = np.array([p.capacity for p in pools])
    need = np.minimum(demand, cap @ np.array([p.max_replicas for p in pools]))  # infeasible peaks: cap at max
    if keep_one:  # like the policy without scale to zero: at least one replica in every interval
        need = np.maximum(need, cap.min())
    serve = nx if cold_start else 0     # first index of the variables whose capacity counts
    rows, cols, vals = [np.repeat(np.arange(k), m)], [serve + np.arange(nx)], [np.tile(cap, k)]
    lb = [need]
    if cold_start:                      # y_{j,i} <= x_{j-back,i}: one row per (interval, pool, back)
        lead = [int(np.ceil(p.cold_start_s / interval_s - 1e-9)) for p in pools]
        link = [(j, i, back) for j in range(k) for i in range(m) for back in range(min(lead[i], j) + 1)]
        j, i, back = (np.array(t, dtype=int) for t in zip(*link))
        row = k + np.arange(len(link))
        rows += [row, row]
        cols += [(j - back) * m + i, nx + j * m + i]
        vals += [np.ones(len(link)), -np.ones(len(link))]
        lb.append(np.zeros(len(link)))
    lb = np.concatenate(lb)
    n = 2 * nx if cold_start else nx
    A = sparse.csr_array((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(lb), n))
    c = np.concatenate([np.tile(price, k), np.zeros(n - nx)])
    lo = np.concatenate([np.tile([p.min_replicas for p in pools], k), np.zeros(n - nx)]).astype(float)
    hi = np.tile([p.max_replicas for p in pools], n // m).astype(float)
    if integral:
        res = milp(c, constraints=LinearConstraint(A, lb=lb, ub=np.inf), integrality=np.ones(n),
                   bounds=Bounds(lo, hi), options={"time_limit": 60})
    else:
        res = linprog(c, A_ub=-A, b_ub=-lb, bounds=list(zip(lo, hi)), method="highs")
    if res.x is None:
        raise RuntimeError(f"HiGHS found no schedule{' with cold starts' if cold_start else ''}: {res.message}")
    return res.x[:nx].reshape(k, m), float(res.fun), str(res.message)


def offline_optimum(pools: list[PoolModel], arrival_s: np.ndarray, work: np.ndarray, interval_s: float,
                    window_s: float = 10.0, horizon_s: float | None = None, keep_one: bool = True,
                    cold_start: bool = False) -> Optimum:
    """The MILP schedule on peak demand and the LP bound on mean demand (module docstring).

    ``cold_start``: a second reference, not the target's: perfect knowledge of the future but every replica pays
    its cold start (asked for, and paid, cold-start seconds before it serves). Its gap to the plain optimum is the
    cost of cold starts; a policy's gap to it is the cost of not knowing the future. Same demand per interval."""
    horizon = float(horizon_s if horizon_s is not None else (arrival_s[-1] if len(arrival_s) else 0.0))
    peak, mean = interval_demands(arrival_s, work, interval_s, window_s, horizon)
    x, cost, status = _solve(pools, peak, interval_s, integral=True, keep_one=keep_one, cold_start=cold_start)
    _, bound, _ = _solve(pools, mean, interval_s, integral=False, keep_one=keep_one)
    plan = [{p.name: int(round(x[j, i])) for i, p in enumerate(pools)} for j in range(len(peak))]
    return Optimum(plan, cost, bound, status)


def clairvoyant_cold_start(pools: list[PoolModel], arrival_s: np.ndarray, work: np.ndarray, interval_s: float,
                           window_s: float = 10.0, horizon_s: float | None = None, keep_one: bool = True) -> Optimum:
    """``offline_optimum(..., cold_start=True)`` (the name the simulator and the benchmark docs use)."""
    return offline_optimum(pools, arrival_s, work, interval_s, window_s, horizon_s, keep_one, cold_start=True)
