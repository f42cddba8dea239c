"""kopf handlers of MoEDeployment: create/update/resume reconcile, delete reports (drift: see drift_sweep.py)."""
from __future__ import annotations

import kopf

from moe_operator.api import GROUP, PLURAL, VERSION

from . import admin_secret, cache_claims, metrics, trace
from .reconcile import apply_outcome, reconcile


@kopf.on.create(GROUP, VERSION, PLURAL)
def on_create(body, patch, **_):
    """A new MoEDeployment."""
    meta = body["metadata"]
    trace.mark(meta["namespace"], meta["name"], "handler")
    apply_outcome(body, reconcile(body, fresh=True), patch)
    trace.mark(meta["namespace"], meta["name"], "returned")


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_update(body, patch, **_):
    """The spec changed."""
    apply_outcome(body, reconcile(body), patch)


@kopf.on.resume(GROUP, VERSION, PLURAL)
def on_resume(body, patch, **_):
    """Seen again after an operator restart (also finishes a create that a killed operator left half done).

    Strict (the spec's sizes and SPEC_CHANGE_ONLY fields applied) only for a generation not yet reconciled: a restart
    of a newer operator must not roll every deployment's Ray cluster for fields it renders differently (drift.py)."""
    applied = (body.get("status") or {}).get("observedGeneration")
    apply_outcome(body, reconcile(body, strict=applied != body["metadata"].get("generation")), patch)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def on_delete(name, namespace, logger, **_):
    """The RayService goes with its owner (Kubernetes garbage collection via ownerReferences)."""
    logger.info("MoEDeployment %s/%s deleted; its RayService is garbage-collected", namespace, name)
    admin_secret.forget(namespace, name)
    metrics.forget(namespace, name)
    cache_claims.PENDING.pop((namespace, name), None)
