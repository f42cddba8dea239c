"""The safety net: every ``--drift-interval`` seconds, re-check each MoEDeployment's RayService (and its policy, claims
and status) with a non-strict reconcile.

A consumer of handlers/loops.py, like the autoscaler and the rebalancer: it shares their one LIST per step, each
object is reconciled in its own thread of the consumer's pool (a slow or hung object holds up no other), a failure
is retried at the next interval and counted, and a sweep that hangs fails the liveness probe (``loops.health``).
Not a kopf timer per object: kopf timers put a finalizer on every MoEDeployment (deletion then blocks whenever the
operator is not running). Writes happen only when something drifted or the status changed (drift.py, status.py).
An object is first checked one interval after the operator first lists it: the resume handler has just reconciled it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import autoscale, loops
from .config import CONFIG
from .reconcile import apply_outcome, reconcile


@dataclass
class State:
    next_at: float = 0.0


STATES: dict[tuple[str, str], State] = {}


def tick(body: dict[str, Any], now: float) -> None:
    """One object's check (a reconcile that leaves the autoscaler's sizes alone); its next one an interval later.
    With autoscaling off, the worker pods follow Serve's counts here (nothing else moves them)."""
    meta = body["metadata"]
    STATES.setdefault((meta["namespace"], meta["name"]), State()).next_at = now + CONFIG.drift_interval_seconds
    apply_outcome(body, reconcile(body, strict=False))
    if not autoscale.enabled(body):
        autoscale.follow_serve(body, now)


def tick_due(now: float, bodies: list[dict[str, Any]]) -> int:
    """Check every listed MoEDeployment whose interval has passed (objects seen for the first time wait one)."""
    for body in bodies:
        meta = body["metadata"]
        STATES.setdefault((meta["namespace"], meta["name"]), State(now + CONFIG.drift_interval_seconds))
    return loops.run_due(bodies, STATES, enabled=lambda body: True, tick=tick, new_state=State,
                         retry_s=CONFIG.drift_interval_seconds, what="drift", now=now)


loops.register("drift", tick_due)
