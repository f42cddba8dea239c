"""The runtime admin token Secret (docs/contracts.md section 7): created before the RayService whose pods read it.

With ``spec.rebalance.enabled`` the render injects env ``MOE_ADMIN_TOKEN`` from Secret ``<name>-runtime-admin``
(key ``token``, ``optional: true``) into every Ray container, and the rebalancer sends it as a Bearer token.
The Secret is owned by the MoEDeployment (garbage-collected with it). An existing one is used only when this
MoEDeployment owns it (an earlier life of the operator made it, or an admin who brings their own token set the
ownerReference): whoever pre-creates it knows its token, so one owned by nobody or by another object is refused,
reported, and neither injected into the pods nor sent by the rebalancer. The operator only gets and creates Secrets (no
list, watch, update or delete), so a Secret with an empty token is reported, not repaired.
"""
from __future__ import annotations

import base64
import logging
import secrets as pysecrets
import time
from typing import Any

import kopf
from kubernetes import client
from kubernetes.client.rest import ApiException

from moe_operator.render.context import ADMIN_TOKEN_KEY, admin_secret_name
from moe_operator.render.rayservice import LABEL_DEPLOYMENT, MANAGED_BY

from . import kube

log = logging.getLogger(__name__)
TOKEN_KEY = ADMIN_TOKEN_KEY
_warned: set[tuple[str, str, str]] = set()   # (namespace, name, problem) already logged
# (namespace, name, uid) -> monotonic time its Secret was last seen holding a token: no API calls until RECHECK_S
_present: dict[tuple[str, str, str], float] = {}
RECHECK_S = 300.0   # then ask again (one POST, 409, GET): a Secret deleted by hand comes back at the next sweep


def forget(namespace: str, name: str) -> None:
    """The MoEDeployment is gone (its Secret goes with it by garbage collection): drop what we remembered."""
    for key in [k for k in _present if k[:2] == (namespace, name)]:
        _present.pop(key, None)


def new_token() -> str:
    """32 random bytes, URL-safe base64 (43 characters)."""
    return pysecrets.token_urlsafe(32)


def secret_body(owner: dict[str, Any], token: str) -> dict[str, Any]:
    """The Secret object for MoEDeployment ``owner``: key ``token``, owned by it (``kopf.adopt``, as the RayService)."""
    name = owner["metadata"]["name"]
    secret = {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": admin_secret_name(name), "labels": {**MANAGED_BY, LABEL_DEPLOYMENT: name}},
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }
    kopf.adopt(secret, owner=owner)
    return secret


def token_of(secret: Any) -> str:
    """The decoded ``token`` of a V1Secret (or a dict); "" when absent or empty."""
    data = (secret.get("data") if isinstance(secret, dict) else secret.data) or {}
    raw = data.get(TOKEN_KEY) or ""
    try:
        return base64.b64decode(raw).decode().strip()
    except (ValueError, UnicodeDecodeError):
        return ""


def _core() -> client.CoreV1Api:
    return kube.core()


def read_token(namespace: str, name: str, uid: str | None) -> str | None:
    """The admin token of MoEDeployment ``name`` with ``uid`` (None: no Secret it owns, or no right to read it;
    "" when empty)."""
    try:
        secret = _core().read_namespaced_secret(admin_secret_name(name), namespace)
        return token_of(secret) if kube.owned_by(secret, uid) else None
    except ApiException as exc:
        if exc.status in (403, 404):
            return None
        raise


def ensure(body: dict[str, Any], spec: Any) -> str | None:
    """Create the admin Secret of MoEDeployment ``body`` when ``spec.rebalance.enabled`` and none exists.

    POST first (the usual case on create), GET only on 409 AlreadyExists to see whether the existing one has a
    token. Once the Secret is known to hold a token, later reconciles of the same object (uid) skip the API for
    ``RECHECK_S``; then the next one asks again, so a Secret deleted by hand is created anew.
    Returns "created", "adopted" (a Secret of ours with a token was there), "known" (seen before), "foreign" (one
    this MoEDeployment does not own is there: refused, the render must not inject it), or None (rebalance off,
    or a problem logged once: an empty token, no RBAC for Secrets, any other API error). Never raises: serving does
    not depend on the Secret (the rebalancer waits for it), so it must not fail the reconcile that creates the
    RayService.
    """
    if not spec.rebalance.enabled:
        return None
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    key = (ns, name, meta.get("uid") or "")
    if key in _present and time.monotonic() - _present[key] < RECHECK_S:
        return "known"
    secret_name = admin_secret_name(name)
    try:
        try:
            _core().create_namespaced_secret(ns, secret_body(body, new_token()))
        except ApiException as exc:
            if exc.status != 409:
                raise
            # there already: ours (an earlier life, or an admin's own token with our ownerReference), or a stranger's
            existing = _core().read_namespaced_secret(secret_name, ns)
            if not kube.owned_by(existing, meta.get("uid")):
                _warn_once(ns, name, "foreign", f"Secret {secret_name} exists and is not owned by this "
                           "MoEDeployment: refused (whoever made it knows its token), so the runtime admin API stays "
                           "off and rebalancing cannot work; delete it (the operator then creates one) or, to bring "
                           "your own token, set this MoEDeployment as its owner")
                return "foreign"
            if not token_of(existing):
                _warn_once(ns, name, "empty", f"Secret {secret_name} has no '{TOKEN_KEY}': the runtime admin API "
                           "stays off and rebalancing cannot work; put a token in it or delete it so the operator "
                           "creates one")
                return None
            _present[key] = time.monotonic()
            return "adopted"
        kube.Writes.add("secret")
        log.info("created Secret %s/%s (runtime admin token)", ns, secret_name)
        _present[key] = time.monotonic()
        return "created"
    except ApiException as exc:
        if exc.status == 403:
            _warn_once(ns, name, "forbidden", f"cannot create or read Secret {secret_name} ({exc.reason}): grant the "
                       "operator get/create on secrets (the chart does with rebalance.enabled) or create it yourself "
                       "with a 'token' key")
        else:
            _warn_once(ns, name, f"api-{exc.status}", f"Secret {secret_name}: API error {exc.status} {exc.reason}; "
                       "retried at the next reconcile (serving goes on without it)")
        return None


def _warn_once(ns: str, name: str, problem: str, message: str) -> None:
    if (ns, name, problem) not in _warned:
        _warned.add((ns, name, problem))
        log.warning("rebalance %s/%s: %s", ns, name, message)
