"""The runtime admin token Secret (docs/contracts.md section 7): created before the RayService whose pods read it.

With ``spec.rebalance.enabled`` the render injects env ``MOE_ADMIN_TOKEN`` from Secret ``<name>-runtime-admin``
(key ``token``, ``optional: true``) into every Ray container, and the rebalancer sends it as a Bearer token.
The Secret is owned by the MoEDeployment (garbage-collected with it); an existing one with a non-empty token is
adopted unchanged, so an admin may bring their own. The operator only gets and creates Secrets (no list, watch,
update or delete), so a Secret with an empty token is reported, not repaired.
"""
from __future__ import annotations

import base64
import logging
import secrets as pysecrets
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from moe_operator.render.context import admin_secret_name

from . import kube

log = logging.getLogger(__name__)
TOKEN_KEY = "token"
_warned: set[tuple[str, str, str]] = set()   # (namespace, name, problem) already logged


def new_token() -> str:
    """32 random bytes, URL-safe base64 (43 characters)."""
    return pysecrets.token_urlsafe(32)


def secret_body(owner: dict[str, Any], token: str) -> dict[str, Any]:
    """The Secret object for MoEDeployment ``owner``: key ``token``, owned by it."""
    meta = owner["metadata"]
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {
            "name": admin_secret_name(meta["name"]), "namespace": meta["namespace"],
            "labels": {"app.kubernetes.io/managed-by": "moe-operator", "serving.moe-operator.io/deployment": meta["name"]},
            "ownerReferences": [{"apiVersion": owner.get("apiVersion", "serving.moe-operator.io/v1alpha1"),
                                 "kind": owner.get("kind", "MoEDeployment"), "name": meta["name"],
                                 "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
        },
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def token_of(secret: Any) -> str:
    """The decoded ``token`` of a V1Secret (or a dict); "" when absent or empty."""
    data = (secret.get("data") if isinstance(secret, dict) else secret.data) or {}
    raw = data.get(TOKEN_KEY) or ""
    try:
        return base64.b64decode(raw).decode().strip()
    except (ValueError, UnicodeDecodeError):
        return ""


def _core() -> client.CoreV1Api:
    return client.CoreV1Api(kube.api().api_client)


def read_token(namespace: str, name: str) -> str | None:
    """The admin token of MoEDeployment ``name`` (None: no Secret, or no right to read it; "" when empty)."""
    try:
        return token_of(_core().read_namespaced_secret(admin_secret_name(name), namespace))
    except ApiException as exc:
        if exc.status in (403, 404):
            return None
        raise


def ensure(body: dict[str, Any], spec: Any) -> str | None:
    """Create the admin Secret of MoEDeployment ``body`` when ``spec.rebalance.enabled`` and none exists.

    Returns "created", "adopted" (a Secret with a token was there), or None (rebalance off, or a problem that is
    logged once: an empty token, no RBAC for Secrets). Never raises for those: serving does not depend on it.
    """
    rebalance = getattr(spec, "rebalance", None)
    if rebalance is None or not rebalance.enabled:
        return None
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    secret_name = admin_secret_name(name)
    try:
        try:
            existing = _core().read_namespaced_secret(secret_name, ns)
        except ApiException as exc:
            if exc.status != 404:
                raise
            existing = None
        if existing is not None:
            if token_of(existing):
                return "adopted"
            _warn_once(ns, name, "empty", f"Secret {secret_name} has no '{TOKEN_KEY}': the runtime admin API stays "
                       f"off and rebalancing cannot work; put a token in it or delete it so the operator creates one")
            return None
        try:
            _core().create_namespaced_secret(ns, secret_body(body, new_token()))
            kube.Writes.add("secret")
            log.info("created Secret %s/%s (runtime admin token)", ns, secret_name)
            return "created"
        except ApiException as exc:
            if exc.status == 409:   # created meanwhile (another reconcile, a person): adopt it
                return "adopted"
            raise
    except ApiException as exc:
        if exc.status == 403:
            _warn_once(ns, name, "forbidden", f"cannot read or create Secret {secret_name} ({exc.reason}): grant the "
                       "operator get/create on secrets (the chart does) or create it yourself with a 'token' key")
            return None
        raise


def _warn_once(ns: str, name: str, problem: str, message: str) -> None:
    if (ns, name, problem) not in _warned:
        _warned.add((ns, name, problem))
        log.warning("rebalance %s/%s: %s", ns, name, message)
