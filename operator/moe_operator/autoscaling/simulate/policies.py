"""The policies the simulator compares: ours and the baselines, one callable each.

Each is called every interval with (observation, replay, now) and returns replicas per pool. Baselines
follow the published behaviour of the autoscaler they stand for (docs/simulate.md says what each does).
"""
from __future__ import annotations

import math
from typing import Sequence

from ..mix import capacity_of, cheapest_mix
from ..model import PoolModel, Settings
from ..observation import Observation
from ..policy import History, decide


def demand_work(obs: Observation, settings: Settings) -> float:
    """Served work units/s plus the queued work drained over backlog_drain_s (the same estimate for all)."""
    work = obs.work_per_s(settings.weights)
    if obs.queue_depth and obs.requests_per_s:
        work += obs.queue_depth * (work / obs.requests_per_s) / settings.backlog_drain_s
    elif obs.queue_depth:
        work += obs.queue_depth  # no rate yet: at least something
    return work


class Ours:
    """moe-operator's policy, unchanged (policy.decide)."""

    name = "ours"

    def __init__(self, pools: Sequence[PoolModel], settings: Settings):
        self.pools, self.settings, self.history = list(pools), settings, History()

    def __call__(self, obs, replay, now):
        d = decide(obs, self.pools, self.settings, self.history, now)
        self.history = d.history
        return d.replicas


class CheapestSinglePool(Ours):
    """Our policy restricted to the pool with the lowest $/hour per work unit (no spill)."""

    name = "cheapest-pool"

    def __init__(self, pools, settings):
        best = min(pools, key=lambda p: p.price_per_work)
        super().__init__([best], settings)
        self.all = list(pools)

    def __call__(self, obs, replay, now):
        r = super().__call__(obs, replay, now)
        return {p.name: r.get(p.name, 0) for p in self.all}


class StaticPeak:
    """Static provisioning for the trace's peak interval demand / targetUtilization (cheapest mix, never changes)."""

    name = "static-peak"

    def __init__(self, pools, settings, peak_work: float):
        self.pools = list(pools)
        lower = {p.name: p.min_replicas for p in pools}
        upper = {p.name: p.max_replicas for p in pools}
        need = peak_work / settings.target_utilization
        self.replicas = cheapest_mix(self.pools, need, lower, upper) or upper

    def __call__(self, obs, replay, now):
        return dict(self.replicas)


class HpaUtilization:
    """Kubernetes HPA on utilisation per pool: desired = ceil(current x util / target), 10% tolerance,
    300 s scale-down stabilization (max of recent recommendations), minReplicas >= 1 per pool."""

    name = "hpa"

    def __init__(self, pools, settings, tolerance=0.1, down_window_s=300.0):
        self.pools, self.s, self.tol, self.window = list(pools), settings, tolerance, down_window_s
        self.recs: list[tuple[float, dict]] = []

    def __call__(self, obs, replay, now):
        ready_cap = capacity_of(self.pools, obs.ready)
        util = min(1.0, obs.work_per_s(self.s.weights) / ready_cap) if ready_cap > 0 else 1.0
        ratio = util / self.s.target_utilization
        cur = replay.last_asked or {}
        rec = {}
        for p in self.pools:
            c = max(1, cur.get(p.name, 1))
            want = c if abs(ratio - 1) <= self.tol else math.ceil(c * ratio)
            rec[p.name] = min(p.max_replicas, max(max(1, p.min_replicas), want))
        self.recs = [(t, r) for t, r in self.recs if now - t <= self.window] + [(now, rec)]
        out = {}
        for p in self.pools:
            hi = max(r[p.name] for _, r in self.recs)
            out[p.name] = rec[p.name] if rec[p.name] >= cur.get(p.name, 0) else min(cur.get(p.name, 0), hi)
        return out


class RayServeOngoing:
    """Ray Serve's default autoscaler per pool deployment: desired = ceil(ongoing requests / target_ongoing_requests),
    requests spread evenly over replicas, upscale_delay_s 30, downscale_delay_s 600."""

    name = "ray-serve"

    def __init__(self, pools, settings, target_ongoing: float, upscale_delay_s=30.0, downscale_delay_s=600.0):
        self.pools, self.target = list(pools), target_ongoing
        self.up_delay, self.down_delay = upscale_delay_s, downscale_delay_s
        self.since: dict[str, tuple[str, float]] = {}

    def __call__(self, obs, replay, now):
        cur = dict(replay.last_asked or {})
        total = sum(cur.values())
        ongoing = replay.ongoing()
        out = {}
        for p in self.pools:
            c = cur.get(p.name, 0)
            share = ongoing * (c / total if total else 1.0 / len(self.pools))
            want = min(p.max_replicas, max(p.min_replicas, math.ceil(share / self.target)))
            if c == 0 and share > 0 and total == 0:
                want = max(want, 1)
            direction = "up" if want > c else "down" if want < c else ""
            if not direction:
                self.since.pop(p.name, None)
                out[p.name] = c
                continue
            d0, t0 = self.since.get(p.name, (direction, now))
            if d0 != direction:
                t0 = now
            self.since[p.name] = (direction, t0)
            delay = self.up_delay if direction == "up" else self.down_delay
            out[p.name] = want if now - t0 >= delay or c == 0 else c
        return out


class WvaCostGreedy:
    """llm-d Workload Variant Autoscaler's cost-aware greedy: add replicas to the pool with the lowest
    $/hour per unit of capacity until capacity >= demand / targetUtilization, remove them from the most
    expensive while the rest still covers it. No stabilization window."""

    name = "wva-greedy"

    def __init__(self, pools, settings):
        self.pools, self.s = list(pools), settings

    def __call__(self, obs, replay, now):
        need = demand_work(obs, self.s) / self.s.target_utilization
        cur = {
            p.name: min(p.max_replicas, max(p.min_replicas, (replay.last_asked or {}).get(p.name, 0)))
            for p in self.pools
        }
        cheap_first = sorted(self.pools, key=lambda p: p.price_per_work)
        while capacity_of(self.pools, cur) < need:
            p = next((p for p in cheap_first if cur[p.name] < p.max_replicas), None)
            if p is None:
                break
            cur[p.name] += 1
        for p in reversed(cheap_first):
            while cur[p.name] > p.min_replicas and capacity_of(self.pools, cur) - p.capacity >= need and \
                    (sum(cur.values()) > 1):
                cur[p.name] -= 1
        return cur


class Schedule:
    """A precomputed schedule (the offline optimum): replicas per pool per interval."""

    name = "optimum"

    def __init__(self, plan: list[dict[str, int]], interval_s: float):
        self.plan, self.interval = plan, interval_s

    def at(self, now: float) -> dict[str, int]:
        return self.plan[min(len(self.plan) - 1, int(now // self.interval))]

    def __call__(self, obs, replay, now):
        return self.at(now)
