"""The disk tier's claims of each MoEDeployment (render/cache_claims.py): created before its RayService.

Owned by the MoEDeployment (``kopf.adopt``: garbage-collected with it, and the cache with them). A claim of the same
name that it does not own is never adopted nor mounted: the reconcile stops before the RayService
(``PrefixCacheClaimNotOwned``), since a stranger's volume would receive this tenant's KV blocks (prompt contents)
and feed it blocks this tenant did not write. Most of a claim's spec is immutable, so an owned claim is only grown:
when the spec asks for more (a larger ``size`` or ``maxReplicas``) its storage request is raised, which the
StorageClass must allow (``allowVolumeExpansion``); a refusal is logged and the claim kept, never a failed reconcile
(the runtime's writers stay within what the filesystem has). Claims of pools that are gone are left to the garbage
collector with the MoEDeployment: their blocks may serve again if the pool comes back.
"""
from __future__ import annotations

import logging
from typing import Any

import kopf
from kubernetes.client.rest import ApiException

from moe_operator.render.cache_claims import render_cache_claims
from moe_operator.render.context import quantity_bytes
from moe_operator.render.inputs import RenderInput

from . import kube

log = logging.getLogger(__name__)


def _get(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        obj = kube.core().read_namespaced_persistent_volume_claim(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return kube.api().api_client.sanitize_for_serialization(obj)


def _requested(claim: dict[str, Any]) -> int:
    try:
        return quantity_bytes(str(claim["spec"]["resources"]["requests"]["storage"]))
    except Exception:  # noqa: BLE001 - an unreadable request: treat as none, so a grow is attempted
        return 0


PENDING: dict[tuple[str, str], list[str]] = {}   # (namespace, name) -> its claims not Bound at the last look


def pending_note(namespace: str, name: str) -> str | None:
    """What the Ready message should say while a claim of this MoEDeployment is not Bound (its pods cannot start)."""
    names = PENDING.get((namespace, name))
    if not names:
        return None
    return (f"PersistentVolumeClaim(s) {', '.join(names)} not Bound yet: the pods that mount them cannot start "
            "(check that cache.diskTier.storageClassName names a class that provides ReadWriteMany volumes)")


def ensure(body: dict[str, Any], r: RenderInput) -> tuple[str, str] | None:
    """Create or grow each pool's claim. ``("terminating", name)`` for a claim still being deleted (an earlier
    MoEDeployment of this name: its pods hold it until they go), ``("foreign", name)`` for one this MoEDeployment
    does not own (left alone), else None. API errors other than a refused expansion raise (kopf retries; the
    RayService is written after). A changed storageClassName is not applied: a claim's class is immutable. Claims
    not Bound are remembered for the status (``pending_note``)."""
    meta = body["metadata"]
    ns, uid = meta["namespace"], meta.get("uid")
    pending: list[str] = []
    PENDING[(ns, meta["name"])] = pending
    for want in render_cache_claims(r, r.labels):
        kopf.adopt(want, owner=body)
        name = want["metadata"]["name"]
        live = _get(ns, name)
        if live is None:
            try:
                kube.core().create_namespaced_persistent_volume_claim(ns, want)
                kube.Writes.add("create")
                log.info("created PersistentVolumeClaim %s/%s", ns, name)
                pending.append(name)
                continue
            except ApiException as exc:
                if exc.status != 409:
                    raise
                live = _get(ns, name)
                if live is None:
                    continue   # created and deleted meanwhile: the next reconcile creates it
        if (live.get("metadata") or {}).get("deletionTimestamp"):
            return "terminating", name
        if not kube.owned_by(live, uid):
            return "foreign", name
        if live.get("spec", {}).get("storageClassName") != want["spec"].get("storageClassName"):
            log.warning("PersistentVolumeClaim %s/%s keeps StorageClass %r (the spec names %r): a claim's class "
                        "cannot change; delete the claim to have it made again with the new class", ns, name,
                        live.get("spec", {}).get("storageClassName"), want["spec"].get("storageClassName"))
        if (live.get("status") or {}).get("phase") != "Bound":
            pending.append(name)
        if _requested(live) < _requested(want):
            size = want["spec"]["resources"]["requests"]["storage"]
            try:
                kube.core().patch_namespaced_persistent_volume_claim(
                    name, ns, {"spec": {"resources": {"requests": {"storage": size}}}})
                kube.Writes.add("patch")
                log.info("grew PersistentVolumeClaim %s/%s to %s", ns, name, size)
            except ApiException as exc:
                if exc.status not in (403, 422):
                    raise
                log.warning("PersistentVolumeClaim %s/%s not grown to %s (%s): its StorageClass may not allow "
                            "expansion; the disk tier keeps within what it has", ns, name, size, exc.reason)
    return None
