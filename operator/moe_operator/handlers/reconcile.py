"""One reconcile of one MoEDeployment: plan -> render -> create or repair the RayService -> status + Events.

Glue only: planning decides, render builds, this module applies and reports. It is called by the kopf
handlers of the MoEDeployment (create/update/resume/timer) and of its RayService (deleted or edited by hand).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes.client.rest import ApiException

from moe_operator.errors import SpecInvalid, UserError
from moe_operator.render.context import build_render_input
from moe_operator.planning import plan_deployment
from moe_operator.render.pipeline import parse_spec
from moe_operator.render.rayservice import render_rayservice

from . import admin_secret, cache_claims, drift, kube, metrics, netpol, readiness, status, trace, upgrade
from .config import CONFIG

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    status: dict[str, Any]
    events: list[tuple[str, str, str]] = field(default_factory=list)   # (type Normal|Warning, reason, message)


def reconcile(body: dict[str, Any], strict: bool = True, fresh: bool = False) -> Outcome:
    """Bring the RayService of ``body`` (a MoEDeployment object) in line with its spec. Never raises for a bad spec.

    ``strict``: the spec changed (create/update/resume), so worker-group bounds follow it too; otherwise (timer,
    RayService watch) the sizes the autoscaler set are left alone (see drift.py).
    ``fresh``: a new MoEDeployment (the create handler): its RayService most likely does not exist, so create it
    first and read it only on 409 AlreadyExists (a killed operator's earlier life made it), one round trip less
    before the RayService appears.
    """
    meta = body["metadata"]
    name, namespace, generation = meta["name"], meta["namespace"], meta.get("generation")
    old = dict(body.get("status") or {})
    # a generation not applied yet (held by the upgrade gate, or a killed operator's) is applied whole when it is
    strict = strict or (old.get("observedGeneration") is not None and old.get("observedGeneration") != generation)
    try:
        spec = parse_spec(body.get("spec") or {})
        catalog = CONFIG.catalog()
        p = plan_deployment(spec, catalog, name)
        live = None if fresh else kube.get_rayservice(namespace, name)
        r = build_render_input(name, namespace, spec, catalog, p, CONFIG.images, kept_replicas(spec, live))
    except SpecInvalid as exc:
        return _stopped(old, generation, exc.reason, str(exc))
    except UserError as exc:   # e.g. a broken catalog ConfigMap: the spec is fine, the cluster config is not
        return _stopped(old, generation, "CatalogInvalid", str(exc))
    # spec.rebalance: the admin token Secret exists before pods that read it; a stranger's is never injected
    if admin_secret.ensure(body, spec) == "foreign":
        r = dataclasses.replace(r, admin_token_secret=None)
    desired = _adopted(r, body)
    events: list[tuple[str, str, str]] = []
    created = False
    if live is not None and not kube.owned_by(live, meta.get("uid")):
        return _not_owned(old, generation, namespace, name)
    writing = "NetworkPolicy"
    try:
        # Ray's dashboard and GCS take no credential: their NetworkPolicy exists before any Ray pod (docs/security.md)
        if CONFIG.network_policy is not None and \
                netpol.ensure(body, CONFIG.network_policy, fresh, r.labels) == "foreign":
            return _stopped(old, generation, "NetworkPolicyNotOwned",
                            f"NetworkPolicy {namespace}/{name} exists and is not owned by this MoEDeployment: the "
                            "operator neither adopts nor overwrites it, and starts no Ray pods without its own policy; "
                            "delete or rename that NetworkPolicy, or give this MoEDeployment another name",
                            spec_invalid=False)
        writing = "PersistentVolumeClaim"
        claim = cache_claims.ensure(body, r)   # the disk tier's claims exist before the pods that mount them
        if claim is not None and claim[0] == "terminating":
            return _stopped(old, generation, "PrefixCacheClaimTerminating",
                            f"PersistentVolumeClaim {namespace}/{claim[1]} is still being deleted (the pods of an "
                            "earlier MoEDeployment of this name hold it until they stop); the claim is made again "
                            "once it is gone", spec_invalid=False)
        if claim is not None:
            return _stopped(old, generation, "PrefixCacheClaimNotOwned",
                            f"PersistentVolumeClaim {namespace}/{claim[1]} exists and is not owned by this "
                            "MoEDeployment: the operator neither adopts nor mounts it (it would hold this "
                            "deployment's prompt KV blocks); delete or rename that claim, or give this MoEDeployment "
                            "another name", spec_invalid=False)
        writing = "RayService"
        if live is None:
            live = kube.create_rayservice_object(namespace, desired)   # the stored object: no GET after it
            created = live is not None
            if created:
                trace.mark(namespace, name, "posted")
                # queued at once, not with the outcome: whoever sees the new RayService should find its Event too
                kube.post_event_soon(body, "Normal", "Created", f"created RayService {name} ({_pools_word(r)})")
            else:
                live = kube.get_rayservice(namespace, name)
                if live is not None and not kube.owned_by(live, meta.get("uid")):
                    return _not_owned(old, generation, namespace, name)
                if fresh and live is not None:   # keep the sizes the autoscaler set on the existing one
                    r = build_render_input(name, namespace, spec, catalog, p, CONFIG.images, kept_replicas(spec, live))
                    desired = _adopted(r, body)
        # a change that needs a second Ray cluster waits, said in the status, until its surge fits the budget
        if live is not None and not created:
            why = upgrade.write_blocked(live, desired, strict, _upgrade_pools(spec, p),
                                        spec.autoscaling.budget.max_hourly_cost)
            if why is not None:
                return _upgrade_blocked(old, generation, r, p, live, why, namespace)
        # just created from ``desired``: nothing to compare (two YAML parses of serveConfigV2 saved);
        # the sweep checks it
        if live is not None and not created and drift.drifted(live, desired, strict):
            if kube.replace_with_retry(namespace, name, lambda cur: drift.repair(cur, desired, strict)):
                events.append(("Normal", "Updated",
                               f"updated RayService {name} to match the spec (generation {generation})"))
                live = kube.get_rayservice(namespace, name)
    except ApiException as exc:
        if exc.status not in (400, 422):
            raise
        # a value our schema lets through but Kubernetes refuses in a rendered object: the spec's to fix, said once
        return _stopped(old, generation, f"{writing}Rejected", f"the API server refused the {writing} rendered "
                        f"from this spec ({exc.status}): {_api_message(exc)}; change the spec field it names")
    counted = None if created or live is None else readiness.of_rayservice(namespace, live)
    return Outcome(status.ok_status(old, generation, r, p, live, counted,
                                    waiting_on=cache_claims.pending_note(namespace, name)), events)


def kept_replicas(spec, live: dict[str, Any] | None) -> dict[str, int]:
    """The live replica counts a re-render keeps: the autoscaler's, while it scales this deployment; with autoscaling
    off nobody else sets them, so the spec's ``replicas`` is the count (a spec edit then scales, and the drift sweep
    moves the pods: autoscale.follow_serve)."""
    return drift.live_replicas(live) if spec.autoscaling.enabled else {}


def _api_message(exc: ApiException) -> str:
    """The API server's own sentence from a Status body (its field path and value), else the HTTP reason."""
    try:
        return str(json.loads(exc.body)["message"])
    except (TypeError, ValueError, KeyError):
        return str(exc.reason)


def _adopted(r, body: dict[str, Any]) -> dict[str, Any]:
    """The RayService ``r`` renders to, owned by the MoEDeployment ``body`` (garbage-collected with it)."""
    desired = render_rayservice(r)
    kopf.adopt(desired, owner=body)
    return desired


def _stopped(old: dict, generation: int | None, reason: str, message: str, spec_invalid: bool = True) -> Outcome:
    """Nothing was applied: Ready is False with ``reason``; the Warning goes out once per distinct message."""
    return Outcome(status.invalid_status(old, generation, reason, message, spec_invalid),
                   [("Warning", reason, message)] if _new_problem(old, reason, message) else [])


def _not_owned(old: dict, generation: int | None, namespace: str, name: str) -> Outcome:
    """A RayService of our name that this MoEDeployment does not own: never adopted (our ownerReference on it would
    have it deleted with this MoEDeployment) and never overwritten."""
    return _stopped(old, generation, "RayServiceNotOwned",
                    f"RayService {namespace}/{name} exists and is not owned by this MoEDeployment: the operator "
                    "leaves it alone; delete or rename that RayService, or give this MoEDeployment another name",
                    spec_invalid=False)


def _upgrade_pools(spec, p) -> list[upgrade.Pool]:
    return [upgrade.Pool(pool.name, p.pool(pool.name).cost.price_per_replica_hour, pool.max_replicas)
            for pool in spec.pools]


def _upgrade_blocked(old: dict, generation: int | None, r, p, live: dict, why: str, namespace: str) -> Outcome:
    """The spec's change is held: the serving cluster stays as it is, and the status says what the upgrade costs."""
    counted = readiness.of_rayservice(namespace, live)
    st = status.ok_status(old, generation, r, p, live, counted, blocked=(upgrade.REASON, why))
    # not applied: kstatus/Argo and ``kubectl wait`` must not take this generation as rolled out, and the reconcile
    # that finally applies it (a sweep, once the budget allows) does so strictly
    st["observedGeneration"] = old.get("observedGeneration")
    was = next((c for c in old.get("conditions") or [] if c.get("type") == "Progressing"), {})
    new = was.get("reason") != upgrade.REASON or was.get("message") != status.bounded(why)
    return Outcome(st, [("Warning", upgrade.REASON, why)] if new else [])


def _new_problem(old: dict, reason: str, message: str) -> bool:
    """Emit the Warning once per distinct problem, not on every retry/timer tick."""
    for c in old.get("conditions") or []:
        if c.get("type") == "Ready":
            return not (c.get("status") == "False" and c.get("reason") == reason
                        and c.get("message") == status.bounded(message))
    return True


def _pools_word(r) -> str:
    return ", ".join(f"{p.name}: {p.replicas}x{p.devices_per_replica} {p.accelerator}" for p in r.pools)


# The handlers, the drift sweep and the RayService watch reconcile one object in different threads, each from the
# object as it read it: two at once both find a problem missing from the status and both warn. A Warning identical
# to one posted for the same object within this window is such a twin; the status dedupes the rest.
WARNING_REPEAT_S = 60.0
_warned: dict[tuple, float] = {}      # (object uid, reason, message) -> monotonic time posted
_warned_lock = threading.Lock()


def _first_warning(body: dict[str, Any], reason: str, message: str) -> bool:
    meta = body["metadata"]
    key = (meta.get("uid") or (meta.get("namespace"), meta.get("name")), reason, message)
    now = time.monotonic()
    with _warned_lock:
        last = _warned.get(key)
        if last is not None and now - last < WARNING_REPEAT_S:
            return False
        _warned[key] = now
        if len(_warned) > 1024:       # bounded: entries past the window decide nothing
            for k in [k for k, t in _warned.items() if now - t >= WARNING_REPEAT_S]:
                del _warned[k]
        return True


def apply_outcome(body: dict[str, Any], outcome: Outcome, patch: Any | None = None) -> None:
    """Post the Events and write the status keys that changed (none changed: no write)."""
    metrics.record(body["metadata"]["namespace"], body["metadata"]["name"], outcome.status)
    for type_, reason, message in outcome.events:
        if type_ == "Warning" and not _first_warning(body, reason, message):
            continue
        kube.post_event(body, type_, reason, message)   # direct API call: kopf.info needs kopf's handler context
    delta = status.changed(body.get("status") or {}, outcome.status)
    if not delta:
        return
    meta = body["metadata"]
    if trace.enabled:   # the mark's text costs a scan of the conditions: only when someone records it
        ready = next((c.get("message", "") for c in outcome.status.get("conditions") or []
                      if c.get("type") == "Ready"), "")
        trace.mark(meta["namespace"], meta["name"], f"status {','.join(sorted(delta))} | {ready}")
    if patch is not None:
        patch.status.update(delta)
        kube.Writes.add("status")
    else:
        kube.patch_moed_status(meta["namespace"], meta["name"], delta)


# the benchmark's tiny spec: planning and rendering it touches every template, validator and YAML path we use
WARM_SPEC = {"model": {"source": "builtin://tiny-moe", "architecture": "tiny"}, "engine": "torch",
             "pools": [{"name": "cpu", "accelerator": "cpu", "devicesPerReplica": 1, "minReplicas": 0,
                        "maxReplicas": 1}]}


def warm_up() -> float:
    """Plan, render and compare one tiny spec at start-up; returns the seconds it took (API: only the catalog read).

    One-time costs (jinja2 compiling the templates, pydantic building validators, lazy imports) are then paid
    once before the first burst of MoEDeployments, not by the first handlers in several threads at once.
    """
    t0 = time.monotonic()
    try:
        spec = parse_spec(WARM_SPEC)
        catalog = CONFIG.catalog()
        p = plan_deployment(spec, catalog, "warm-up")
        r = build_render_input("warm-up", "default", spec, catalog, p, CONFIG.images, {})
        desired = render_rayservice(r)
        drift.drifted(desired, desired)
        status.ok_status({}, 1, r, p, None)
    except Exception as exc:  # noqa: BLE001 - only an optimisation: the handlers report real problems
        log.warning("warm-up render failed (%s); the first reconciles pay the one-time costs", exc)
    return time.monotonic() - t0
