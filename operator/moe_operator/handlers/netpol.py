"""The NetworkPolicy of each MoEDeployment (render/networkpolicy.py): created before its RayService, repaired like it.

Owned by the MoEDeployment (``kopf.adopt``: garbage-collected with it). A NetworkPolicy of the same name that this
MoEDeployment does not own is never adopted nor overwritten; the reconcile then stops before the RayService
(``NetworkPolicyNotOwned``), so no Ray pod runs without the policy meant for it. Unlike the RayService, the spec is
compared whole (``==``), not as "rendered values present": in a security policy an added key (a
``namespaceSelector: {}`` beside a ``podSelector``) widens who gets in. The API server's defaults for it are
``protocol: TCP`` and ``policyTypes``, both rendered, so an untouched policy compares equal.
"""
from __future__ import annotations

import copy
import logging
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.rest import ApiException

from moe_operator.render.networkpolicy import PolicySettings, render_networkpolicy

from . import drift, kube

log = logging.getLogger(__name__)
CONFLICT_RETRIES = 5


def _api() -> client.NetworkingV1Api:
    return client.NetworkingV1Api(kube.api().api_client)


def _as_dict(obj: Any) -> dict[str, Any]:
    return kube.api().api_client.sanitize_for_serialization(obj)


def _get(namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return _as_dict(_api().read_namespaced_network_policy(name, namespace))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _create(namespace: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """The stored object; None when one of that name exists already."""
    try:
        created = _as_dict(_api().create_namespaced_network_policy(namespace, body))
    except ApiException as exc:
        if exc.status == 409:
            return None
        raise
    kube.Writes.add("create")
    return created


def _replace(namespace: str, name: str, body: dict[str, Any]) -> None:
    _api().replace_namespaced_network_policy(name, namespace, body)
    kube.Writes.add("replace")


def desired(body: dict[str, Any], settings: PolicySettings, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta = body["metadata"]
    policy = render_networkpolicy(meta["name"], meta["namespace"], settings, labels)
    kopf.adopt(policy, owner=body)
    return policy


def drifted(live: dict[str, Any], want: dict[str, Any]) -> bool:
    have = live.get("metadata") or {}
    if not drift.contains(have.get("labels") or {}, want["metadata"]["labels"]):
        return True
    uids = {r.get("uid") for r in have.get("ownerReferences") or []}
    return any(r["uid"] not in uids for r in want["metadata"]["ownerReferences"]) or live.get("spec") != want["spec"]


def ensure(body: dict[str, Any], settings: PolicySettings, fresh: bool, labels: dict[str, str] | None = None) -> str:
    """Create or repair the policy; "created", "updated", "unchanged" or "foreign" (a stranger's: left alone).

    ``fresh`` (a new MoEDeployment): POST first, GET only on 409, as for the RayService. API errors raise (kopf
    retries the handler; the sweep retries the rest): the RayService is written only after its policy.
    """
    meta = body["metadata"]
    ns, name, uid = meta["namespace"], meta["name"], meta.get("uid")
    want = desired(body, settings, labels)
    live = None if fresh else _get(ns, name)
    for attempt in range(CONFLICT_RETRIES):
        if live is None:
            if _create(ns, want) is not None:
                log.info("created NetworkPolicy %s/%s", ns, name)
                return "created"
            live = _get(ns, name)
            if live is None:
                continue   # deleted between the 409 and the GET: create again
        if not kube.owned_by(live, uid):
            return "foreign"
        if not drifted(live, want):
            return "unchanged"
        fixed = copy.deepcopy(live)
        fixed["spec"] = want["spec"]
        fixed["metadata"]["labels"] = {**(live["metadata"].get("labels") or {}), **want["metadata"]["labels"]}
        refs = [r for r in live["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
        fixed["metadata"]["ownerReferences"] = refs + want["metadata"]["ownerReferences"]
        try:
            _replace(ns, name, fixed)   # carries live's resourceVersion: a concurrent writer is never overwritten
            log.info("repaired NetworkPolicy %s/%s", ns, name)
            return "updated"
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise
            log.info("conflict replacing NetworkPolicy %s/%s (attempt %d); re-reading", ns, name, attempt + 1)
            live = _get(ns, name)
    raise RuntimeError(f"NetworkPolicy {ns}/{name}: still conflicting after {CONFLICT_RETRIES} attempts")
