"""The safety net: every ``--drift-interval`` seconds, re-check every MoEDeployment's RayService.

One list per interval instead of a kopf timer per object: kopf timers put a finalizer on every MoEDeployment
(deletion then blocks whenever the operator is not running) and cost a task per object. Writes happen only when
something drifted or the status changed (see drift.py, status.py).
"""
from __future__ import annotations

import asyncio
import logging

import kopf

from . import kube, metrics
from . import leader
from .config import CONFIG
from .reconcile import apply_outcome, reconcile

log = logging.getLogger(__name__)


def check_all() -> int:
    """Reconcile (non-strict) every MoEDeployment in the watched namespaces; returns how many were checked."""
    items = kube.list_moeds(CONFIG.namespaces)
    for body in items:
        if body["metadata"].get("deletionTimestamp"):
            continue
        try:
            apply_outcome(body, reconcile(body, strict=False))
        except Exception:  # noqa: BLE001 - one bad object must not stop the sweep
            metrics.ERRORS.labels(body["metadata"]["namespace"], body["metadata"]["name"]).inc()
            log.exception("drift check of %s/%s failed", body["metadata"]["namespace"], body["metadata"]["name"])
    return len(items)


async def _loop() -> None:
    while True:
        await asyncio.sleep(CONFIG.drift_interval_seconds)
        try:
            if await asyncio.to_thread(leader.is_active):
                await asyncio.to_thread(check_all)   # Events go through kube.post_event (no kopf context needed)
        except Exception:  # noqa: BLE001
            log.exception("drift sweep failed")


@kopf.on.startup()
async def start_drift_sweeps(**_) -> None:
    asyncio.get_running_loop().create_task(_loop())
