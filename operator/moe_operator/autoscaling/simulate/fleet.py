"""Queueing model of a fleet of replicas, stepped one second at a time.

Model (documented in docs/simulate.md):
  * every request is work in work units (model.WorkWeights); the fleet serves a fluid FIFO queue at
    capacity C(t) = sum over pools of ready replicas x capacity (work units/s);
  * a replica asked for becomes ready after its pool's cold start; removing one is immediate; every
    replica asked for (ready or starting) is paid for, $/hour x seconds / 3600;
  * a request waits until the queue ahead drains (FIFO at rate C), then its TTFT is that wait plus its
    prefill on one replica (computed prompt tokens / the pool's prefill tokens/s; the pool is drawn in
    proportion to ready capacity); its TPOT is the capacity-weighted tpot_at_capacity scaled by the
    utilisation when it starts (clamped to [0.3, 1]);
  * a request meets the SLO when TTFT <= ttft target and TPOT <= tpot target.
"""
from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..model import PoolModel, WorkWeights
from ..observation import Observation


@dataclass
class FleetState:
    pools: list[PoolModel]
    weights: WorkWeights
    asked: dict[str, int] = field(default_factory=dict)          # replicas paid for
    starting: dict[str, list[float]] = field(default_factory=dict)  # ready times of replicas still cold
    cold_start: bool = True

    def ready(self, p: PoolModel) -> int:
        return self.asked.get(p.name, 0) - len(self.starting.get(p.name, []))

    def set_replicas(self, want: dict[str, int], now: float) -> None:
        for p in self.pools:
            have = self.asked.get(p.name, 0)
            n = int(want.get(p.name, 0))
            cold = self.starting.setdefault(p.name, [])
            if n > have:
                delay = p.cold_start_s if self.cold_start else 0.0
                cold.extend([now + delay] * (n - have))
            elif n < have:
                drop = have - n
                cold.sort()
                while drop and cold:      # cancel the latest-starting replicas first
                    cold.pop()
                    drop -= 1
            self.asked[p.name] = n

    def tick(self, now: float) -> None:
        for p in self.pools:
            self.starting[p.name] = [t for t in self.starting.get(p.name, []) if t > now]

    def capacity(self) -> float:
        return sum(self.ready(p) * p.capacity for p in self.pools)

    def cost_rate(self) -> float:
        return sum(self.asked.get(p.name, 0) * p.price_per_hour for p in self.pools)


class ReplayResults:
    """Per-request results both serving models share: ``ttft``/``tpot`` arrays (s, inf = never started),
    ``ttft_target``/``tpot_target`` and the ``trace``."""

    def slo_met(self) -> np.ndarray:
        return (self.ttft <= self.ttft_target) & (self.tpot <= self.tpot_target)

    def unmet_tokens(self) -> float:
        """Tokens of requests that never got a first token."""
        never = ~np.isfinite(self.ttft)
        tr = self.trace
        return float((tr.prompt[never] + tr.cached[never] + tr.output[never]).sum())


class Replay(ReplayResults):
    """One policy's run over a trace: feed ``step`` every second; ``observation`` every interval."""

    def __init__(self, trace, pools, weights: WorkWeights, ttft_target: float, tpot_target: float,
                 cold_start: bool = True, seed: int = 0):
        self.trace, self.pools, self.w = trace, pools, weights
        self.fleet = FleetState(list(pools), weights, cold_start=cold_start)
        self.ttft_target, self.tpot_target = ttft_target, tpot_target
        self.work = (
            weights.prompt * trace.prompt + weights.cached_prompt * trace.cached + weights.generated * trace.output
        )
        n = len(trace)
        self.ttft = np.full(n, np.inf)
        self.tpot = np.full(n, np.inf)
        self.rng = np.random.default_rng(seed)
        self.queue: deque = deque()       # [index, remaining work]
        self.next_arrival = 0
        self.running: list[float] = []     # heap of end times of started requests
        self.cost = 0.0
        self.actions = 0
        self.last_asked: dict[str, int] | None = None
        self.series: list[tuple] = []      # (t, demand w/s, capacity w/s, {pool: asked}, cost $/h)
        self._win = {"tokens": np.zeros(3), "started": 0, "ttft": [], "tpot": [], "arrived_work": 0.0}

    # ---- control -----------------------------------------------------------------------------------------
    def apply(self, replicas: dict[str, int], now: float) -> None:
        clean = {p.name: int(replicas.get(p.name, 0)) for p in self.pools}
        if self.last_asked is not None and clean != self.last_asked:
            self.actions += 1
        self.last_asked = clean
        self.fleet.set_replicas(clean, now)

    def observation(self, now: float, interval: float) -> Observation:
        """What the runtime's metrics would say over the last ``interval`` seconds."""
        w = self._win
        tok = w["tokens"] / interval
        obs = Observation(
            observed_at=now,
            tokens_per_s={"prompt": float(tok[0]), "cached_prompt": float(tok[1]), "generated": float(tok[2])},
            requests_per_s=w["started"] / interval,
            queue_depth=float(len(self.queue)),
            running=float(len(self.running)),
            ttft_p95_s=float(np.percentile(w["ttft"], 95)) if w["ttft"] else None,
            tpot_p95_s=float(np.percentile(w["tpot"], 95)) if w["tpot"] else None,
            ready={p.name: self.fleet.ready(p) for p in self.pools},
        )
        self._win = {"tokens": np.zeros(3), "started": 0, "ttft": [], "tpot": [], "arrived_work": 0.0}
        return obs

    def ongoing(self) -> int:
        """Requests queued or running (what Ray Serve's autoscaler counts)."""
        return len(self.queue) + len(self.running)

    # ---- one second --------------------------------------------------------------------------------------
    def step(self, now: float, dt: float = 1.0) -> None:
        tr = self.trace
        self.fleet.tick(now)
        arrived = 0.0
        while self.next_arrival < len(tr) and tr.arrival_s[self.next_arrival] < now + dt:
            i = self.next_arrival
            self.queue.append([i, float(self.work[i])])
            arrived += self.work[i]
            self.next_arrival += 1
        while self.running and self.running[0] <= now:
            heapq.heappop(self.running)
        cap = self.fleet.capacity()
        budget = cap * dt
        used = 0.0
        if cap > 0 and self.queue:
            ready = [(p, self.fleet.ready(p)) for p in self.pools]
            shares = np.array([n * p.capacity for p, n in ready], dtype=float)
            shares = shares / shares.sum()
            backlog = sum(r[1] for r in self.queue)
            util = min(1.0, backlog / budget) if budget > 0 else 1.0
            tpot_now = sum(s * p.tpot_at_capacity_s for s, (p, _) in zip(shares, ready)) * min(1.0, max(0.3, util))
            while self.queue and used < budget - 1e-9:
                item = self.queue[0]
                i, rem = item
                if rem == self.work[i]:  # first service: the request starts now (+ its position in this second)
                    start = max(now, tr.arrival_s[i]) + used / cap
                    p = ready[int(self.rng.choice(len(ready), p=shares))][0]
                    prefill = tr.prompt[i] / p.prefill_tps if p.prefill_tps > 0 else 0.0
                    self.ttft[i] = start - tr.arrival_s[i] + prefill
                    self.tpot[i] = tpot_now
                    self._win["started"] += 1
                    self._win["ttft"].append(self.ttft[i])
                    self._win["tpot"].append(tpot_now)
                    heapq.heappush(self.running, start + prefill + tr.output[i] * tpot_now)
                take = min(rem, budget - used)
                frac = take / self.work[i] if self.work[i] > 0 else 1.0
                self._win["tokens"] += frac * np.array([tr.prompt[i], tr.cached[i], tr.output[i]])
                used += take
                if rem - take <= 1e-9:
                    self.queue.popleft()
                else:
                    item[1] = rem - take
        self.cost += self.fleet.cost_rate() * dt / 3600.0
        self.series.append((now, arrived / dt, cap, dict(self.fleet.asked), self.fleet.cost_rate(), used / dt))

    @property
    def done(self) -> bool:
        return self.next_arrival >= len(self.trace) and not self.queue

