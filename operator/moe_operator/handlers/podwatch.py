"""Watch of the Ray worker pods of our RayClusters: a pod that turns Ready, stops being Ready, starts terminating or
goes away refreshes its MoEDeployment's readiness in status within seconds (issue 13), not at the next drift sweep.

Only pods that KubeRay made from our templates are watched, filtered by the API server (``SELECTOR``, set as kopf's
server-side label selector for pods) and again by kopf (``LABELS``): a worker pod (``ray.io/node-type=worker``, set
by KubeRay v1.5.0 and not overridable by a template) carrying our ``app.kubernetes.io/managed-by`` and
``serving.moe-operator.io/deployment`` labels (templates/rayservice.yaml.j2). The deployment label only names which
MoEDeployment to refresh; the refresh itself reads the RayService it owns and counts that one's active RayCluster's
pods (handlers/readiness.py), so a stranger's pod with our labels causes at most one extra read.

Glue: ``Transitions`` (which events change readiness) and ``Coalescer`` (one refresh per deployment per burst, run
in a thread, never on the event loop) hold the logic; ``status.with_readiness`` computes the new status. On a
standby replica (peering) kopf pauses this watch like the others.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Hashable

import kopf

from moe_operator.render.rayservice import LABEL_DEPLOYMENT, MANAGED_BY

from . import kube, metrics, readiness, status

log = logging.getLogger(__name__)

NODE_TYPE = "ray.io/node-type"
LABELS: dict[str, Any] = {**MANAGED_BY, NODE_TYPE: "worker", LABEL_DEPLOYMENT: kopf.PRESENT}
SELECTOR = ",".join([*(f"{k}={v}" for k, v in MANAGED_BY.items()), f"{NODE_TYPE}=worker", LABEL_DEPLOYMENT])
SETTLE_S = 1.0   # a refresh waits this long after the first change, so a burst (a whole group replaced) is one write


def deployment_of(pod: dict[str, Any]) -> tuple[str, str] | None:
    """(namespace, MoEDeployment name) a worker pod belongs to, from our label; None without it."""
    meta = pod.get("metadata") or {}
    name = (meta.get("labels") or {}).get(LABEL_DEPLOYMENT)
    return (meta["namespace"], name) if name and meta.get("namespace") else None


class Transitions:
    """Remembers each watched pod's readiness (by uid) and tells which events change a deployment's ready count."""

    def __init__(self) -> None:
        self.seen: dict[str, bool] = {}

    def changed(self, event_type: str | None, pod: dict[str, Any]) -> bool:
        """True when this event may change the count: the pod turned Ready or stopped being Ready (its Ready
        condition flipped, or a deletionTimestamp appeared), or a pod that counted is gone. kopf's initial listing
        (type None) only records: the resume handlers reconcile every deployment at start-up anyway."""
        uid = (pod.get("metadata") or {}).get("uid") or ""
        if event_type == "DELETED":
            return bool(self.seen.pop(uid, True))
        now, before = readiness.pod_ready(pod), self.seen.get(uid)
        self.seen[uid] = now
        if event_type is None:
            return False
        if before is None:          # ADDED (or first seen after a missed event): it matters only once it counts
            return now
        return now != before


class Coalescer:
    """At most one pending and one running ``run(key)`` per key: a poke schedules a run ``settle_s`` later; pokes
    until it starts join it, pokes while it runs schedule exactly one more. ``run`` is blocking and goes to the
    loop's default executor; ``poke`` never blocks."""

    def __init__(self, run: Callable[[Hashable], Any], settle_s: float = SETTLE_S):
        self.run, self.settle_s = run, settle_s
        self.due: set[Hashable] = set()
        self.running: set[Hashable] = set()
        self.tasks: set[asyncio.Task] = set()

    def poke(self, key: Hashable) -> bool:
        """Ask for a run of ``key``; True when this started a new waiter (False: one pending or running covers it)."""
        if key in self.due:
            return False
        self.due.add(key)
        if key in self.running:
            return False            # the running waiter sees it in ``due`` when its run returns
        task = asyncio.get_running_loop().create_task(self._waiter(key))
        self.tasks.add(task)        # a strong reference until it is done
        task.add_done_callback(self.tasks.discard)
        return True

    async def _waiter(self, key: Hashable) -> None:
        loop = asyncio.get_running_loop()
        while key in self.due:
            await asyncio.sleep(self.settle_s)
            self.due.discard(key)
            self.running.add(key)
            try:
                await loop.run_in_executor(None, self.run, key)
            except Exception:  # noqa: BLE001 - the next change or the drift sweep tries again
                log.exception("readiness refresh of %s failed", key)
            finally:
                self.running.discard(key)


def refresh(key: Hashable) -> dict[str, Any] | None:
    """Blocking: re-count the ready replicas of MoEDeployment ``key`` = (namespace, name) and patch the status keys
    that changed (pools, replicas, ready, conditions); returns that delta (None: nothing written)."""
    namespace, name = key   # type: ignore[misc]
    body = kube.get_moed(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    live = kube.get_rayservice(namespace, name)
    if live is None or not kube.owned_by(live, body["metadata"].get("uid")):
        return None
    counted = readiness.of_rayservice(namespace, live)
    old = body.get("status") or {}
    new = None if counted is None else status.with_readiness(old, live, counted)
    if new is None:
        return None
    delta = status.changed(old, new)
    metrics.record(namespace, name, new)
    if delta:
        kube.patch_moed_status(namespace, name, delta)
        log.info("readiness of %s/%s refreshed from its pods: %s", namespace, name, new.get("replicas"))
    return delta or None


TRANSITIONS = Transitions()
REFRESHES = Coalescer(refresh)


@kopf.on.startup()
async def narrow_the_pod_watch(settings: kopf.OperatorSettings, **_) -> None:
    """The API server sends only our worker pods (kopf's ``labels`` filter alone would list every pod)."""
    settings.watching.label_selectors["v1", "pods"] = SELECTOR


@kopf.on.event("v1", "pods", labels=LABELS)
async def on_worker_pod_event(event, body, **_):
    """Async and cheap: decides on the event loop, queues the refresh; the API calls run in a thread."""
    key = deployment_of(body)
    if key is not None and TRANSITIONS.changed(event.get("type"), body):
        REFRESHES.poke(key)
