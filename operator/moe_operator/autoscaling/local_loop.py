"""The autoscaler's loop for a local Ray Serve app (``moectl up``): the kopf timer's tick without Kubernetes.

Each ``tick(now)``: observe (a metrics source) -> take ready replicas per pool from Serve itself (the runtime's
/metrics merges a pool's replicas into one series, so counting series says 1 per pool) -> ``decide`` -> when the
replicas change, ``apply`` them (redeploy the serveConfigV2 with new ``engine-<pool>`` num_replicas) and emit
one line. No kopf, kubernetes, ray or torch imports here: the source, ``ready`` and ``apply`` are injected.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from moe_operator.api.times import rfc3339

from .model import PoolModel, Settings
from .observation import Observation
from .policy import Decision, History
from .step import observe_and_decide


def decision_line(now: float, decision: Decision, ready: Mapping[str, int] | None = None) -> str:
    """One line per decision: UTC time, desired replicas per pool, ready ones (Serve's RUNNING), reason.

    ``autoscale 2026-01-01T00:00:00Z cpu=2 (ready cpu=1) <reason>``; ``?`` when ready is unknown; the reason
    starts with ``scale up``/``scale down`` (replicas changed), ``keep`` or ``hold:`` (stale or missing metrics).
    """
    at = rfc3339(now)
    replicas = " ".join(f"{k}={v}" for k, v in decision.replicas.items())
    seen = " ".join(f"{k}={'?' if ready is None else int(ready.get(k, 0))}" for k in decision.replicas)
    return f"autoscale {at} {replicas} (ready {seen}) {decision.reason}"


@dataclass
class Tick:
    """What one tick saw and did: ``changed`` is True when ``apply`` was called with ``decision.replicas``."""

    at: float
    observation: Observation | None
    decision: Decision
    changed: bool


class LocalAutoscaler:
    """Runs ``decide`` against one local app.

    source: has ``observe() -> Observation | None`` (and ``last_error``); ready: () -> {pool: running replicas}
    or None when unknown; apply: (replicas) -> None, raises on failure (the decision is then retried next tick);
    initial: the replicas the app was deployed with (the policy's starting point).
    """

    def __init__(self, source, pools: Sequence[PoolModel], settings: Settings,
                 ready: Callable[[], Mapping[str, int] | None], apply: Callable[[Mapping[str, int]], None],
                 initial: Mapping[str, int], emit: Callable[[str], None] = print):
        self.source, self.pools, self.settings = source, list(pools), settings
        self.ready, self.apply, self.emit = ready, apply, emit
        self.applied = dict(initial)
        self.history = History(desired=dict(initial))
        self.ticks: list[Tick] = []

    def tick(self, now: float | None = None) -> Tick:
        now = time.time() if now is None else now
        seen: dict = {}

        def serve_ready(_said):   # Serve's RUNNING replicas, read after the scrape: /metrics sums a pool in one series
            seen["ready"] = self.ready()
            return seen["ready"]
        obs, d = observe_and_decide(self.source, self.pools, self.settings, self.history, now, serve_ready)
        ready = seen["ready"] if "ready" in seen else self.ready()
        changed = dict(d.replicas) != self.applied
        if changed:
            try:
                self.apply(dict(d.replicas))
            except Exception as exc:  # keep the old replicas (and history) so the next tick retries
                self.emit(f"autoscale: applying {d.replicas} failed: {exc}")
                t = Tick(now, obs, d, False)
                self.ticks.append(t)
                return t
            self.applied = dict(d.replicas)
        self.history = d.history
        t = Tick(now, obs, d, changed)
        self.ticks.append(t)
        self.emit(decision_line(now, d, ready))
        return t

    def run(self, interval_s: float, stop: threading.Event) -> None:
        """Tick every ``interval_s`` seconds until ``stop`` is set; a failing tick is reported, not fatal."""
        while not stop.wait(interval_s):
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 (the loop must outlive one bad scrape or decision)
                self.emit(f"autoscale: tick failed: {exc}")
