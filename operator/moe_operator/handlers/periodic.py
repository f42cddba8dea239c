"""The safety net: every ``--drift-interval`` seconds, re-check every MoEDeployment's RayService.

One list per interval instead of a kopf timer per object: kopf timers put a finalizer on every MoEDeployment
(deletion then blocks whenever the operator is not running) and cost a task per object. Writes happen only when
something drifted or the status changed (see drift.py, status.py).
"""
from __future__ import annotations

import asyncio
import logging

import kopf

from . import kube
from .config import CONFIG
from .reconcile import apply_outcome, reconcile

log = logging.getLogger(__name__)


def check_all() -> int:
    """Reconcile (non-strict) every MoEDeployment in the watched namespaces; returns how many were checked."""
    from moe_operator.api import GROUP, PLURAL, VERSION

    api = kube.api()
    if CONFIG.namespaces:
        items = [i for ns in CONFIG.namespaces
                 for i in api.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]]
    else:
        items = api.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    for body in items:
        if body["metadata"].get("deletionTimestamp"):
            continue
        try:
            apply_outcome(body, reconcile(body, strict=False))
        except Exception:  # noqa: BLE001 - one bad object must not stop the sweep
            log.exception("drift check of %s/%s failed", body["metadata"]["namespace"], body["metadata"]["name"])
    return len(items)


async def _loop() -> None:
    while True:
        await asyncio.sleep(CONFIG.drift_interval_seconds)
        try:
            await asyncio.to_thread(check_all)   # copies the context: kopf.info/warn work from the thread
        except Exception:  # noqa: BLE001
            log.exception("drift sweep failed")


@kopf.on.startup()
async def start_drift_sweeps(**_) -> None:
    asyncio.get_running_loop().create_task(_loop())
