"""Watch of owned RayServices: a hand-deleted RayService is recreated and a hand-edited one repaired at once.

Raw events (``kopf.on.event``) need no finalizer on RayServices; only objects labelled as ours are watched.
"""
from __future__ import annotations

import asyncio

import kopf

from moe_operator.api import KIND

from . import kube
from .reconcile import apply_outcome, reconcile

MANAGED = {"app.kubernetes.io/managed-by": "moe-operator"}


def _owner_name(body) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("controller"):
            return ref.get("name")
    return None


@kopf.on.event(kube.RAY_GROUP, kube.RAY_VERSION, kube.RAY_PLURAL, labels=MANAGED)
async def on_rayservice_event(event, body, logger, **_):
    """Async, so the filter runs on the event loop: KubeRay's many status-only updates (one or more per
    RayService while a burst of them starts) never wait for, nor hold, a slot of kopf's handler thread pool."""
    kind = event.get("type")
    if kind not in ("DELETED", "MODIFIED"):
        return
    name, namespace = _owner_name(body), body["metadata"]["namespace"]
    if not name:
        return
    if kind == "MODIFIED" and not _spec_touched(body):
        return      # KubeRay's status updates: no API call at all
    await asyncio.get_running_loop().run_in_executor(None, _reconcile_owner, namespace, name, kind, logger)


def _reconcile_owner(namespace: str, name: str, kind: str, logger) -> None:
    """Blocking part (API calls): re-read the owner and reconcile it without touching the autoscaler's sizes."""
    owner = kube.get_moed(namespace, name)
    if owner is None or owner["metadata"].get("deletionTimestamp"):
        return
    logger.info("RayService %s/%s %s; reconciling its MoEDeployment", namespace, name, kind.lower())
    apply_outcome(owner, reconcile(owner, strict=False))


def _spec_touched(body) -> bool:
    """Skip status-only updates from KubeRay: those bump resourceVersion but not generation past what we saw."""
    meta = body.get("metadata", {})
    gen = meta.get("generation")
    seen = _SEEN.get(meta.get("uid"))
    _SEEN[meta.get("uid")] = gen
    return seen is not None and gen != seen


_SEEN: dict[str, int] = {}
