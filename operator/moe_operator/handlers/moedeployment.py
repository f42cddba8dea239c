"""kopf handlers of MoEDeployment: create/update/resume reconcile, a timer re-checks for drift, delete reports."""
from __future__ import annotations

import kopf

from moe_operator.api import GROUP, PLURAL, VERSION

from .config import CONFIG
from .reconcile import apply_outcome, reconcile


@kopf.on.create(GROUP, VERSION, PLURAL)
def on_create(body, patch, **_):
    """A new MoEDeployment."""
    apply_outcome(body, reconcile(body), patch)


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_update(body, patch, **_):
    """The spec changed."""
    apply_outcome(body, reconcile(body), patch)


@kopf.on.resume(GROUP, VERSION, PLURAL)
def on_resume(body, patch, **_):
    """Seen again after an operator restart (also finishes a create that a killed operator left half done)."""
    apply_outcome(body, reconcile(body), patch)


@kopf.timer(GROUP, VERSION, PLURAL, interval=CONFIG.drift_interval_seconds, idle=5, initial_delay=5)
def on_timer(body, patch, **_):
    """Safety net: repair drift missed by the RayService watch and refresh readiness; writes only on change."""
    apply_outcome(body, reconcile(body, strict=False), patch)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def on_delete(name, namespace, logger, **_):
    """The RayService goes with its owner (Kubernetes garbage collection via ownerReferences)."""
    logger.info("MoEDeployment %s/%s deleted; its RayService is garbage-collected", namespace, name)
