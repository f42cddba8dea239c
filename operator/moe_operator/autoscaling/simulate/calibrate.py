"""Fit one replica's ServingProfile from the replay of a short profiling run (``moectl simulate --calibrate``).

Why: the simulator's per-replica model (serving.py) is only as good as its prefill rate and decode step time;
the planner's roofline guesses them, a replay of the real endpoint (``moectl replay``) measures them.
Pure: numpy only, no I/O; it takes the replay JSON's parsed ``requests`` list.

  * prefill: requests that reached an idle replica (no other request in flight while they prefilled) give
    ``ttft = a + computed / prefill_tps + cached / cached_prefill_tps`` (least squares; ``a`` is the fixed
    overhead: HTTP, proxy, routing, tokenization, kept as the profile's ``ttft_overhead_s`` when positive).
    Cached tokens are the server's reported prefix-cache hits, else the replay's trace hint. Without usable cache
    data the cached rate is prefill_tps / 0.10, the planner's default (planning.capacity.CACHED_TOKEN_COST).
  * decode: each request's TPOT against b, the mean number of requests decoding at once on its replica during
    its decode (from the replay's own first-token and end times, divided by the replicas behind the endpoint):
    ``tpot = step_base_s + step_per_seq_s * b``.
Data that cannot identify a parameter (too few points, one prompt size, one concurrency) is refused with a
UserError that says what run would.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from moe_operator.errors import UserError

from .serving import ServingProfile

# planning.capacity.CACHED_TOKEN_COST (a cached prompt token costs this fraction of a computed one); a copy so
# that this module imports nothing but numpy (tests/autoscaling/test_calibrate.py keeps the two equal).
DEFAULT_CACHED_TOKEN_COST = 0.10
MIN_PREFILL_POINTS = 5
MIN_DECODE_POINTS = 5
MIN_DECODE_TOKENS = 3            # a TPOT over fewer than 2 inter-token gaps is mostly noise
MIN_PROMPT_SPREAD = 0.2          # (p90 - p10) / median of computed prompt tokens among the prefill points
MIN_CONCURRENCY_SPREAD = 0.5     # p90 - p10 of b (sequences) among the decode points
CHUNK = 512                      # rows per block of the O(n^2) interval overlaps
OUTLIER_MADS = 5.0               # a residual beyond this many robust sigmas (1.4826 x MAD) is a disturbance, not data
MAX_RELATIVE_RMS = 0.5           # a fit whose rms residual exceeds this share of the mean describes nothing


def _col(records: Sequence[dict], key: str) -> np.ndarray:
    try:
        return np.array([np.nan if r.get(key) is None else float(r[key]) for r in records], dtype=float)
    except (TypeError, ValueError, AttributeError):
        raise UserError(f"calibration records: field {key!r} must be a number in every request") from None


def _lstsq(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Coefficients, their standard errors and residual figures of y ~ X."""
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    n, k = X.shape
    dof = max(1, n - k)
    sigma2 = float(resid @ resid) / dof
    try:
        cov = sigma2 * np.linalg.inv(X.T @ X)
        se = np.sqrt(np.clip(np.diag(cov), 0, None))
    except np.linalg.LinAlgError:
        se = np.full(k, np.inf)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    rms = float(np.sqrt(np.mean(resid ** 2)))
    stats = {"rms_residual_s": rms, "relative_rms": rms / float(np.mean(np.abs(y))) if np.any(y) else 0.0,
             "r2": 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else 0.0,
             "max_abs_residual_s": float(np.max(np.abs(resid))) if len(resid) else 0.0}
    return coef, se, stats


def _robust_lstsq(
    X: np.ndarray, y: np.ndarray, min_points: int
) -> tuple[np.ndarray, np.ndarray, dict[str, float], np.ndarray]:
    """_lstsq after dropping gross outliers (|residual| > OUTLIER_MADS robust sigmas, refitted until stable):
    one stall of the machine during a profiling run must not decide the fit. Also returns the mask kept."""
    keep = np.ones(len(y), dtype=bool)
    for _ in range(10):
        coef, se, stats = _lstsq(X[keep], y[keep])
        resid = np.abs(y - X @ coef)
        sigma = 1.4826 * float(np.median(resid[keep]))
        new = resid <= max(OUTLIER_MADS * sigma, 1e-9 * float(np.mean(np.abs(y))))
        if new.sum() < min_points or np.array_equal(new, keep):
            break
        keep = new
    coef, se, stats = _lstsq(X[keep], y[keep])
    stats["outliers_dropped"] = int((~keep).sum())
    return coef, se, stats, keep


def _overlap(a0: np.ndarray, a1: np.ndarray, b0: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] seconds of overlap of intervals [a0, a1] with [b0, b1], in blocks of CHUNK rows."""
    out = np.empty((len(a0), len(b0)))
    for s in range(0, len(a0), CHUNK):
        e = s + CHUNK
        out[s:e] = np.clip(np.minimum(a1[s:e, None], b1[None, :]) - np.maximum(a0[s:e, None], b0[None, :]), 0, None)
    return out


def _round(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def fit_profile(records: Sequence[dict[str, Any]], max_batch: int, kv_tokens: int,
                replicas: int = 1) -> tuple[ServingProfile, dict[str, Any]]:
    """(ServingProfile, report) fitted from replay records; ``max_batch`` and ``kv_tokens`` are the serving
    spec's (a replay cannot measure them), ``replicas`` the replicas behind the endpoint during the replay."""
    if max_batch < 1 or kv_tokens < 1 or replicas < 1:
        raise UserError(
            f"calibration needs max_batch, kv_tokens and replicas >= 1 (got {max_batch}, {kv_tokens}, {replicas})"
        )
    recs = [r for r in records if isinstance(r, dict)]
    sent, first, end = _col(recs, "sent_s"), _col(recs, "first_token_s"), _col(recs, "end_s")
    ok = np.array([r.get("outcome") == "ok" for r in recs]) & ~np.isnan(sent) & ~np.isnan(first) & ~np.isnan(end)
    if ok.sum() == 0:
        raise UserError("the replay has no successful request to calibrate from")

    # Everything that occupied the server counts as load, failed and timed-out requests included.
    busy = ~np.isnan(sent) & ~np.isnan(end)
    decoding = busy & ~np.isnan(first)
    report: dict[str, Any] = {"records": len(recs), "ok": int(ok.sum()), "replicas": replicas}

    # --- prefill: requests alone on a replica from send to first token
    idx = np.flatnonzero(ok)
    bi = np.flatnonzero(busy)
    others = _overlap(sent[idx], first[idx], sent[bi], end[bi]) > 0
    others[np.arange(len(idx)), np.searchsorted(bi, idx)] = False   # idx is a subset of bi: a request's own column
    alone = idx[others.sum(axis=1) < replicas]
    prompt = _col(recs, "prompt_tokens")
    served_cache = _col(recs, "cached_prompt_tokens")
    hint = _col(recs, "cached_prompt_tokens_hint")
    cached = np.where(np.isnan(served_cache), np.nan_to_num(hint), served_cache)
    cached = np.clip(cached, 0, np.nan_to_num(prompt))
    computed = np.nan_to_num(prompt) - cached
    alone = alone[~np.isnan(prompt[alone])]
    n_pre = len(alone)
    if n_pre < MIN_PREFILL_POINTS:
        raise UserError(f"only {n_pre} request(s) reached an idle replica (need {MIN_PREFILL_POINTS}) to fit the "
                        "prefill rate; replay a stretch at low load too (e.g. a smaller --speedup)")
    x, c, y = computed[alone], cached[alone], first[alone] - sent[alone]
    spread = (np.percentile(x, 90) - np.percentile(x, 10)) / max(1.0, float(np.median(x)))
    if spread < MIN_PROMPT_SPREAD:
        raise UserError(f"the {n_pre} requests that reached an idle replica all had about {np.median(x):.0f} computed "
                        "prompt tokens; the prefill rate needs prompts of different lengths (a trace with varied "
                        "prompts, or a larger --scale-tokens)")
    cached_source = "default"
    cached_rate = None
    if np.count_nonzero(c) >= 3 and np.linalg.matrix_rank(np.column_stack([np.ones(n_pre), x, c])) == 3:
        coef, se, stats, _ = _robust_lstsq(np.column_stack([np.ones(n_pre), x, c]), y, MIN_PREFILL_POINTS)
        if coef[1] > 0 and 0 < coef[2] < coef[1] and coef[2] > 2 * se[2]:
            cached_source, cached_rate = "fit", 1.0 / coef[2]
    if cached_source == "default":
        coef, se, stats, _ = _robust_lstsq(np.column_stack([np.ones(n_pre), x + DEFAULT_CACHED_TOKEN_COST * c]), y,
                                           MIN_PREFILL_POINTS)
    if not coef[1] > 0 or coef[1] < 2 * se[1]:
        raise UserError(f"TTFT of the {n_pre} requests at an idle replica does not grow with their prompt "
                        f"(slope {coef[1]:.3g} +- {se[1]:.2g} s/token); the run was too noisy or too short to fit "
                        "the prefill rate")
    if stats["relative_rms"] > MAX_RELATIVE_RMS:
        raise UserError(f"TTFT at an idle replica is not explained by the prompt length (rms residual "
                        f"{stats['relative_rms']:.0%} of the mean over {n_pre} requests); the run was disturbed")
    prefill_tps = 1.0 / coef[1]
    if cached_rate is None:
        cached_rate = prefill_tps / DEFAULT_CACHED_TOKEN_COST
    report["prefill"] = {"points": n_pre, "intercept_s": _round(coef[0]), "prefill_tps": _round(prefill_tps),
                         "cached_prefill_tps": _round(cached_rate), "cached_source": cached_source,
                         "slope_rel_stderr": _round(se[1] / coef[1], 3),
                         **{k: _round(v, 4) if isinstance(v, float) else v for k, v in stats.items()}}

    # --- decode: TPOT against the mean number of sequences decoding alongside on the same replica
    comp = _col(recs, "completion_tokens")
    dec = idx[(comp[idx] >= MIN_DECODE_TOKENS) & (end[idx] > first[idx])]
    if len(dec) < MIN_DECODE_POINTS:
        raise UserError(f"only {len(dec)} successful request(s) generated >= {MIN_DECODE_TOKENS} tokens "
                        f"(need {MIN_DECODE_POINTS}) to fit the decode step")
    di = np.flatnonzero(decoding)
    span = end[dec] - first[dec]
    b = _overlap(first[dec], end[dec], first[di], end[di]).sum(axis=1) / span / replicas
    b = np.clip(b, 1.0, float(max_batch))
    tpot = span / (comp[dec] - 1)
    b_spread = float(np.percentile(b, 90) - np.percentile(b, 10))
    if b_spread < MIN_CONCURRENCY_SPREAD:
        raise UserError(f"all {len(dec)} requests decoded at about the same concurrency (b = {np.median(b):.2f} per "
                        "replica), so the decode step's fixed and per-sequence parts cannot be told apart; replay a "
                        "load that varies (a burst and a lull, or a larger --speedup for part of the run)")
    X = np.column_stack([np.ones(len(dec)), b])
    coef, se, stats, keep = _robust_lstsq(X, tpot, MIN_DECODE_POINTS)
    b, tpot = b[keep], tpot[keep]
    base, per_seq = float(coef[0]), float(coef[1])
    clamped = []
    if per_seq < 0:
        if -per_seq > 2 * se[1]:
            raise UserError(f"TPOT falls as concurrency grows (slope {per_seq:.3g} +- {se[1]:.2g} s/sequence); the "
                            "run was disturbed (other load on the machine?) and cannot calibrate the decode step")
        per_seq, base = 0.0, float(tpot.mean())
        clamped.append("step_per_seq_s")
    elif base < 0:
        if -base > 2 * se[0]:
            raise UserError(f"the decode step's fixed part comes out negative ({base:.3g} +- {se[0]:.2g} s); TPOT "
                            "grows faster than linearly with concurrency, which the serving model cannot represent")
        base, per_seq = 0.0, float((b @ tpot) / (b @ b))
        clamped.append("step_base_s")
    if clamped:
        resid = tpot - (base + per_seq * b)
        rms = float(np.sqrt(np.mean(resid ** 2)))
        stats = {**stats, "rms_residual_s": rms, "relative_rms": rms / float(np.mean(tpot)),
                 "max_abs_residual_s": float(np.max(np.abs(resid))),
                 "r2": 1.0 - float(resid @ resid) / float(((tpot - tpot.mean()) ** 2).sum() or 1.0)}
    if stats["relative_rms"] > MAX_RELATIVE_RMS:
        raise UserError(
            f"TPOT is not explained by the concurrency (rms residual {stats['relative_rms']:.0%} of the mean "
            f"over {len(tpot)} requests); the run was disturbed"
        )
    report["decode"] = {
        "points": int(len(tpot)),
        "step_base_s": _round(base),
        "step_per_seq_s": _round(per_seq),
        "concurrency_min": _round(float(b.min()), 4),
        "concurrency_max": _round(float(b.max()), 4),
        "clamped_to_zero": clamped,
        **{k: _round(v, 4) if isinstance(v, float) else v for k, v in stats.items()},
    }
    profile = ServingProfile(max_batch=int(max_batch), kv_tokens=int(kv_tokens), prefill_tps=float(prefill_tps),
                             cached_prefill_tps=float(cached_rate), step_base_s=base, step_per_seq_s=per_seq,
                             ttft_overhead_s=max(0.0, float(report["prefill"]["intercept_s"])))
    report["prefill"]["ttft_overhead_s"] = profile.ttft_overhead_s   # 0 where the intercept came out negative
    return profile, report
