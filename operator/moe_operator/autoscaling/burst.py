"""The burst reserve: capacity that bursts shorter than a decision interval need, kept between bursts.

A decision sees demand averaged over its interval (30 s): a 2-5 s burst at 3-10x that mean is invisible in
it, and a replica started when the burst shows takes a cold start (90-120 s) to serve, long after the burst.
What the interval does show is the burst's latency: in a FIFO fleet the wait of the queue's tail scales as
1/capacity, so ``ready capacity x TTFT p95 / TTFT target`` estimates the capacity that would have kept that
interval's p95 TTFT at the target (work units/s). The reserve is a high quantile of those samples over the
last ``burst_reserve_s`` seconds (default: 5 cold starts, at least the scale-down window): it holds through gaps shorter than that window (a replica must already be
running when the next burst comes) and decays once bursts stop, as their samples leave the window.
Pure arithmetic; times in seconds, capacities in work units/s.
"""
from __future__ import annotations

import math
from typing import Sequence

from .model import PoolModel, Settings

RESERVE_COLD_STARTS = 5.0   # default window = this many of the longest cold start (600 s for 120 s)


def reserve_window_s(pools: Sequence[PoolModel], settings: Settings) -> float:
    """Seconds the reserve remembers a burst: the setting, else RESERVE_COLD_STARTS x the longest cold start,
    at least scaleDownStabilizationSeconds (a burst's need is not forgotten sooner than a mean need is).

    A burst after a gap G is met only if its capacity was kept through G, since a replica started when the burst
    shows serves a cold start later; a longer window covers longer gaps and pays for idle capacity through them.
    """
    if settings.burst_reserve_s is not None:
        return float(settings.burst_reserve_s)
    cold = RESERVE_COLD_STARTS * max((p.cold_start_s for p in pools), default=0.0)
    return max(cold, settings.scale_down_stabilization_s)


def burst_sample(ready_capacity: float, ttft_p95_s: float | None, ttft_target_s: float | None,
                 prefill_s: float = 0.0) -> float | None:
    """Capacity (work units/s) that would have brought this interval's TTFT p95 to the target; None if unknown.

    prefill_s: a request's own prefill time (s), the part of TTFT that capacity does not shorten: only the
    queueing part, ``ttft - prefill``, scales as 1/capacity and must fit in ``target - prefill``.
    """
    if ttft_p95_s is None or not ttft_target_s or ready_capacity <= 0:
        return None
    wait = max(0.0, ttft_p95_s - prefill_s)
    room = max(ttft_target_s - prefill_s, 0.25 * ttft_target_s)
    return ready_capacity * wait / room


def recent_bursts(samples: Sequence[tuple[float, float]], now: float,
                  window_s: float) -> tuple[tuple[float, float], ...]:
    """The (time s, capacity work units/s) samples of the last ``window_s`` seconds (none when the window is off)."""
    if window_s <= 0:
        return ()
    return tuple((t, c) for t, c in samples if now - t <= window_s + 1e-9)


def burst_quantile(samples: Sequence[tuple[float, float]], quantile: float) -> float:
    """The ``quantile`` of the samples' capacities (already limited to the window); 0 without any."""
    caps = sorted(c for _, c in samples)
    if not caps:
        return 0.0
    return caps[min(len(caps) - 1, math.ceil(quantile * (len(caps) - 1) - 1e-9))]


def burst_reserve(samples: Sequence[tuple[float, float]], now: float, window_s: float, quantile: float) -> float:
    """The ``quantile`` of the (time, capacity) samples of the last ``window_s`` seconds; 0 without any."""
    return burst_quantile(recent_bursts(samples, now, window_s), quantile)
