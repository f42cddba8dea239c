"""Watch of owned RayServices: a hand-deleted RayService is recreated and a hand-edited one repaired at once.

Raw events (``kopf.on.event``) need no finalizer on RayServices; only objects labelled as ours are watched.
"""
from __future__ import annotations

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
def on_rayservice_event(event, body, logger, **_):
    kind = event.get("type")
    if kind not in ("DELETED", "MODIFIED"):
        return
    name, namespace = _owner_name(body), body["metadata"]["namespace"]
    if not name:
        return
    if kind == "MODIFIED" and not _spec_touched(body):
        return      # KubeRay's status updates: no API call at all
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
