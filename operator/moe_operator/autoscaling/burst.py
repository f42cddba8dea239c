"""The latency reserve: capacity for the part of latency that capacity changes, and the check that it did.

A decision sees demand averaged over its interval (30 s); bursts inside it show only in the latency of that
interval. The model (docs/autoscaling.md, "Latency"):

* TTFT p95 = own prefill of the slow request + queueing wait. Only the wait depends on capacity: requests ahead
  of it are served at the fleet's rate C, so the wait is K / C, where K (work units) is the work queued ahead of
  the p95 request, a property of the traffic, not of the fleet. The own prefill p95 is estimated from the
  interval's computed prompt tokens per request m and the fleet's prefill rate r (tokens/s, harmonic mean over
  the ready pools weighted by their capacity): ``ln(20) x m / r`` (the 95th percentile of an exponential
  distribution of mean m/r; prompt lengths are not observed one by one), plus a floor learned by the check below.
* TPOT p95 = a floor (the decode step of an almost empty batch, unknown: learned, 0 until then) + K_tpot / C
  (the batch a replica runs, and its step time above the floor, scale as the load per replica).

Each interval that no earlier queue delayed gives a sample: K = (latency - floor - wait the carried backlog
caused) x C; so does a burst that overloaded the fleet and ended before capacity ordered at its start could have
come (the shortest cold start), with the largest K of its intervals. An overload that lasts longer is demand, not a
burst. The reserve is the capacity that keeps every recurring burst of the window within the target:
``K_2 / (target - floor)``, K_2 the second largest sample (a level seen at least twice, see ``recurring``). When the
floor alone uses the whole target, no capacity meets it and the reserve is 0 for that metric: capacity cannot fix a
request's own prefill.

The check: a scale-up made for latency is judged on the first interval served entirely by its replicas. The two
hypotheses predict K_after = K_before (queueing: the model is right) or K_after = K_before x C_after / C_before
(the excess does not shrink with capacity); the nearer one wins. When it is the second, the floor rises by the
two-point fit ``(K_after - K_before) / (C_after - C_before)`` (seconds) and the window's samples are dropped, so
the capacity added for latency goes back at once.
Pure arithmetic; times in seconds, capacities and K in work units/s and work units.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from .model import PoolModel, Settings

PREFILL_P95_PER_MEAN = math.log(20.0)   # p95 / mean of an exponential distribution
RESERVE_COLD_STARTS = (
    5.0  # default window = this many of the longest cold start (600 s for 120 s): see reserve_window_s
)

# A sample: (time s, capacity that served the interval, TTFT queueing work K (work units) or None,
#            TTFT floor used (s) or None, TPOT work K_tpot or None)
Sample = tuple


def reserve_window_s(pools: Sequence[PoolModel], settings: Settings) -> float:
    """Seconds the reserve remembers a sample: ``burstReserveSeconds``, else RESERVE_COLD_STARTS x the longest
    cold start, at least scaleDownStabilizationSeconds (a latency need is not forgotten sooner than a mean need).

    A burst after a gap G is met only if its capacity was kept through G, since a replica started when the burst
    shows serves a cold start later; a longer window covers longer gaps and pays for idle capacity through them.
    """
    if settings.burst_reserve_s is not None:
        return float(settings.burst_reserve_s)
    cold = RESERVE_COLD_STARTS * max((p.cold_start_s for p in pools), default=0.0)
    return max(cold, settings.scale_down_stabilization_s)


def prefill_rate(pools: Sequence[PoolModel], ready: Mapping[str, int], factors: Mapping[str, float]) -> float:
    """Prompt tokens/s one request's prefill runs at: the capacity-weighted harmonic mean of the ready pools'
    prefill rates (requests go to pools in proportion to their capacity); 0 when unknown."""
    weights = [(ready.get(p.name, 0) * p.capacity * factors.get(p.name, 1.0), p.prefill_tps) for p in pools]
    weights = [(w, r) for w, r in weights if w > 0 and r > 0]
    total = sum(w for w, _ in weights)
    if total <= 0:
        return 0.0
    return total / sum(w / r for w, r in weights)


def own_prefill_p95_s(prompt_tokens_per_request: float, rate: float) -> float:
    """Estimated p95 of the requests' own prefill time (s): ln(20) x mean computed prompt / prefill rate."""
    if rate <= 0 or prompt_tokens_per_request <= 0:
        return 0.0
    return PREFILL_P95_PER_MEAN * prompt_tokens_per_request / rate


def queue_work(latency_s: float | None, floor_s: float, carried_wait_s: float, capacity: float) -> float | None:
    """K = (latency - floor - carried wait) x capacity: the work queued ahead of the slow request (>= 0)."""
    if latency_s is None or capacity <= 0:
        return None
    return max(0.0, latency_s - floor_s - carried_wait_s) * capacity


def reserve_capacity(work: Sequence[float], target_s: float | None, floor_s: float) -> float:
    """Capacity (work units/s) at which the largest queued work K drains within ``target - floor``; 0 when
    there is no sample, no target, or the floor leaves no room (capacity cannot help)."""
    if not work or not target_s:
        return 0.0
    room = target_s - floor_s
    if room <= 0:
        return 0.0
    return max(work) / room


def recent(samples: Sequence[Sample], now: float, window_s: float) -> tuple[Sample, ...]:
    """The samples of the last ``window_s`` seconds (none when the window is off)."""
    if window_s <= 0:
        return ()
    return tuple(s for s in samples if now - s[0] <= window_s + 1e-9)


def recurring(work: Sequence[float]) -> list[float]:
    """The largest queued work the window saw at least twice (its second largest sample), as a one-element list;
    empty with fewer than two samples. The reserve holds capacity through the gaps between bursts, which pays only
    for a burst that comes back: one sample is not evidence that it will, two are. (A single outlier interval,
    a few long prompts or one burst, buys no capacity for a whole window.)"""
    if len(work) < 2:
        return []
    return [sorted(work)[-2]]


def judge(k_before: float, c_before: float, k_after: float, c_after: float) -> float | None:
    """The check after a scale-up made for latency. Returns None when capacity did what the model said (the queued
    work K stayed nearer to K_before than to K_before x C_after / C_before), else the floor (s) the two points
    imply on top of the model's: (K_after - K_before) / (C_after - C_before)."""
    if c_after <= c_before * (1 + 1e-9):
        return None            # no more capacity than before: nothing to learn
    unfixable = k_before * c_after / c_before
    if k_after <= (k_before + unfixable) / 2:
        return None
    return max(0.0, (k_after - k_before) / (c_after - c_before))
