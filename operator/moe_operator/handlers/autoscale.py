"""The autoscaler inside the operator: every ``intervalSeconds`` per MoEDeployment, observe -> decide -> act.

Driven by handlers/loops.py (one LIST of MoEDeployments every 2 s shared with the rebalancer), not a kopf timer
per object: timers put a finalizer on every MoEDeployment. A tick:
  1. reads the spec's metrics source (scrape URL, Prometheus URL, else env ``MOE_PROMETHEUS_URL``);
  2. ``policy.decide`` (pure) with the object's history kept in memory here (rebuilt from status.pools and
     status.lastDecisions on the first tick after a start, so a restart does not scale down early);
  3. when the replicas change: patches the RayService (Serve ``num_replicas`` and worker-group replicas, the
     recorded desired state) AND raises the active RayCluster's worker-group replicas, because KubeRay v1.5.0 does
     not copy replica-only RayService changes to the running cluster; posts one Event. A group above its pool's
     count loses only pods the Ray dashboard shows holding no Serve replica, by name (``remove_drained``);
  4. writes the status keys that changed (none changed: no write).
Stale or missing metrics: ``decide`` holds (never scales down) and the status says why.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.rest import ApiException

from moe_operator.autoscaling import actuator, report
from moe_operator.autoscaling.from_spec import pool_models_from_spec, settings_from_spec
from moe_operator.autoscaling.restore import restore_history
from moe_operator.autoscaling.step import observe_and_decide
from moe_operator.render.drain import MAX_DRAIN_S

from . import kube, loops, metrics, readiness
from .config import CONFIG

log = logging.getLogger(__name__)
LAST_DECISIONS = 20          # status.lastDecisions is bounded to this many entries


@dataclass
class State:
    """What the autoscaler remembers about one MoEDeployment between ticks (on restart, history is rebuilt from
    status: autoscaling/restore.py)."""

    history: Any = None           # policy.History
    next_at: float = 0.0
    source: Any = None
    source_key: tuple | None = None
    held: bool | None = None
    error: str | None = None      # the last actuation error (its Warning Event is posted once)
    drain_since: dict[str, float] = field(default_factory=dict)   # pool -> first tick its group had an excess
    drain_warned: dict[str, int] = field(default_factory=dict)    # pool -> group size a ScaleDownWaiting was for
    unreadable_since: float | None = None   # first of the dashboard looks that have failed since the last good one


STATES: dict[tuple[str, str], State] = {}


_HOST_PATTERN = re.compile(r"^[a-z0-9.*?\[\]!-]+$")   # a host name with fnmatch's wildcards; no scheme, port or path


def parse_hosts(text: str | None) -> list[str]:
    """``--metrics-hosts`` / env ``MOE_METRICS_HOSTS``: comma-separated host patterns (fnmatch: ``*.svc``).
    ValueError for anything else (a URL as a pattern would match no host and refuse every metrics URL)."""
    hosts = [h.strip().lower() for h in (text or "").split(",") if h.strip()]
    for h in hosts:
        if not _HOST_PATTERN.match(h):
            raise ValueError(f"not a host pattern: {h!r} (a host such as prometheus.monitoring.svc or *.svc, "
                             "without scheme, port or path)")
    return hosts


# Hosts a MoEDeployment's metrics URL (spec.autoscaling.metrics) may name; empty: any host (the default, as before
# the list: an in-cluster Prometheus or runtime Service can be in any namespace). The operator's own
# MOE_PROMETHEUS_URL is the admin's choice and is not checked. Set by operator_main from the flag (or env).
METRICS_HOSTS: list[str] = []


class Refused:
    """The source of a metrics URL the allow-list refuses: never asked, always "missing metrics" with the reason."""

    def __init__(self, url: str, host: str):
        self.last_error = (f"metrics URL {url} refused: host {host!r} is not in the operator's allow-list "
                           f"(--metrics-hosts {','.join(METRICS_HOSTS)})")

    def observe(self):
        return None


def _refusal(metrics_spec) -> Refused | None:
    """A Refused source when the spec's metrics URL names a host outside METRICS_HOSTS (None: allowed)."""
    from fnmatch import fnmatchcase
    from urllib.parse import urlsplit

    if not METRICS_HOSTS or metrics_spec is None:
        return None
    for src in (metrics_spec.prometheus, metrics_spec.scrape):
        if src is None:
            continue
        host = (urlsplit(src.url).hostname or "").lower()
        if not any(fnmatchcase(host, pattern) for pattern in METRICS_HOSTS):
            return Refused(src.url, host)
    return None


def _source(state: State, metrics_spec, model: str, engine: str = "torch", scope: dict[str, str] | None = None):
    """The metrics source of one MoEDeployment; Prometheus queries are scoped to ``scope`` (its namespace, the target
    label Kubernetes service discovery attaches), so another namespace's deployment of the same model is never its
    demand. The namespace is the trust boundary: not the deployment, whose pod label anyone there could set."""
    url = os.environ.get("MOE_PROMETHEUS_URL") or None
    key = (metrics_spec.model_dump_json() if metrics_spec is not None else None, model, url, engine,
           tuple(METRICS_HOSTS), tuple(sorted((scope or {}).items())))
    if state.source_key != key:
        from moe_operator.autoscaling.sources import source_for

        src = _refusal(metrics_spec) or source_for(metrics_spec, model, engine=engine, scope=scope)
        if src is None and url:
            from moe_operator.autoscaling.sources.prometheus import PrometheusSource

            src = PrometheusSource(url, model=model, engine=engine, scope=scope)
        state.source, state.source_key = src, key
    return state.source


def _ready(rc: dict | None, pools: list[str]) -> dict[str, int]:
    """Ready replicas per pool from the RayCluster alone (pods unreadable, e.g. no RBAC for them): its group replicas
    once the cluster reports ready workers.

    The fallback for pools the runtime's ``moe_ready_replicas`` gauge does not report (e.g. Ray Serve LLM apps)."""
    if not rc:
        return {}
    st = rc.get("status") or {}
    groups = {
        g.get("groupName"): int(g.get("replicas") or 0) for g in (rc.get("spec") or {}).get("workerGroupSpecs") or []
    }
    ready_workers = st.get("readyWorkerReplicas", st.get("availableWorkerReplicas"))
    out = {}
    for p in pools:
        n = groups.get(p, 0)
        if ready_workers is not None and len(groups) == 1:
            n = min(n, int(ready_workers))
        out[p] = n
    return out


def _conditions(old: list[dict], decision, generation) -> list[dict]:
    from .status import condition

    out = [c for c in old if c.get("type") != "BudgetLimited"]
    for c in decision.conditions:
        if c.type == "BudgetLimited":
            out.append(condition(old, c.type, c.status, c.reason, c.message, generation))
    return out


def tick(body: dict, now: float | None = None) -> dict | None:
    """One autoscaler step for one MoEDeployment; returns the status delta written (None: nothing written)."""
    from moe_operator.errors import UserError

    now = time.time() if now is None else now
    begun = loops.begin_tick(body, STATES, State)
    if begun is None:
        return None
    ns, name, state, dep = begun
    a = dep.spec.autoscaling
    state.next_at = now + float(a.interval_seconds)
    catalog = CONFIG.catalog()
    try:
        pools, weights = pool_models_from_spec(dep, catalog)
    except UserError as exc:
        log.warning("autoscaler: %s/%s: %s", ns, name, exc)
        return None
    settings = settings_from_spec(a, weights)
    rs = kube.get_rayservice(ns, name)
    if rs is None or not kube.owned_by(rs, body["metadata"].get("uid")):
        return None   # the reconcile creates it first; one this object does not own is never scaled (Ready says why)
    try:
        rc = kube.active_raycluster(ns, rs)
    except ApiException as exc:   # 403 without rayclusters RBAC: scale the RayService's record only, say so
        if exc.status != 403:
            raise
        if state.error != "rayclusters forbidden":
            log.warning("autoscaler: %s/%s: cannot read RayClusters (%s): pods will not follow", ns, name, exc.reason)
        state.error, rc = "rayclusters forbidden", None
    pool_names = [p.name for p in pools]
    counted = readiness.observed(ns, rc)   # whole replicas whose pods are all Ready, per pool
    fallback = _ready(rc, pool_names) if counted is None else {}
    ready = readiness.for_autoscaler(pool_names, counted, None, fallback)
    current = actuator.serve_replicas(rs)
    if state.history is None:   # first tick of this process: rebuild from status, so a restart scales nothing down
        state.history, origin = restore_history(body.get("status"), pools, settings, current, now)
        log.info("autoscaler: %s/%s: history restored, desired %s (from %s)", ns, name, _fmt(state.history.desired),
                 origin)
    source = _source(state, a.metrics, dep.spec.model.served_model_name or name, dep.spec.engine, {"namespace": ns})
    # ready: pods Ready and, where the runtime's moe_ready_replicas reports a pool, serving
    obs, d = observe_and_decide(source, pools, settings, state.history, now,
                                lambda seen: readiness.for_autoscaler(pool_names, counted, seen, fallback),
                                no_source="no metrics source: set spec.autoscaling.metrics or MOE_PROMETHEUS_URL")
    if obs is not None:
        ready = obs.ready
    state.history = d.history
    desired = {p: int(d.replicas.get(p, 0)) for p in pool_names}
    scaled = desired != {p: current.get(p, 0) for p in pool_names}
    if scaled:
        try:
            # the record's worker groups never drop below the running cluster's: they follow its removals
            floor = {g.get("groupName"): int(g.get("replicas") or 0)
                     for g in ((rc or {}).get("spec") or {}).get("workerGroupSpecs") or []}
            patch = actuator.rayservice_patch(rs, desired, group_floor=floor)
        except (
            UserError
        ) as exc:  # e.g. no engine-<pool> deployment or LLMConfig for a pool, or a Serve autoscaling_config
            if state.error != str(exc):
                kube.post_event(body, "Warning", "ScaleFailed", f"cannot apply {_fmt(desired)}: {exc}")
            state.error = str(exc)
            log.warning("autoscaler: %s/%s: cannot apply %s: %s", ns, name, _fmt(desired), exc)
            return None
        state.error = None
        if patch is not None:
            kube.replace_with_retry(ns, name, lambda cur: bool(actuator.merge(cur, patch)) or True)
        if rc is not None:   # up only: a scale-down's pods go once Serve has drained them (remove_drained)
            kube.replace_raycluster_with_retry(ns, rc["metadata"]["name"],
                                               lambda cur: actuator.raycluster_grow(cur, desired))
        word = "ScaledUp" if sum(desired.values()) > sum(current.get(p, 0) for p in pool_names) else "ScaledDown"
        kube.post_event(body, "Normal", word, f"{_fmt(desired)}: {d.reason}"[:1024])
        metrics.DECISIONS.labels(ns, name, d.reason.split(":")[0].split(" ")[0] or "scale").inc()

    if rc is not None and not scaled:   # a tick that scaled leaves removals to the next: Serve has not seen it yet
        remove_drained(body, state, rs, rc, desired, now, idle_pools(obs, pool_names))

    old = dict(body.get("status") or {})
    fields = report.status_fields(
        d,
        pools,
        obs,
        ready,
        {p.name: p.accelerator for p in dep.spec.pools},
        a.budget.max_hourly_cost is not None or a.budget.max_cost_per_million_tokens is not None,
    )
    by_name = {p["name"]: p for p in old.get("pools") or []}
    new_pools = []
    for p in fields["pools"]:
        prev = by_name.get(p["name"])
        merged = dict(prev) if prev else dict(p)
        merged["desiredReplicas"] = p["desiredReplicas"]
        merged["costPerHour"] = p["costPerHour"]
        new_pools.append(merged)
    new: dict[str, Any] = {
        "pools": new_pools,
        "tokensPerSecond": fields["tokensPerSecond"],
        "costPerHour": fields["costPerHour"],
        "costPerMillionTokens": fields["costPerMillionTokens"],
        "budgetState": fields["budgetState"],
        "conditions": _conditions(old.get("conditions") or [], d, body["metadata"].get("generation")),
    }
    history = list(old.get("lastDecisions") or [])
    if scaled or state.held != d.held or not history:
        history = (history + [report.last_decision(d, now)])[-LAST_DECISIONS:]
    new["lastDecisions"] = history
    state.held = d.held
    metrics.record_autoscale(ns, name, d, a.budget.max_hourly_cost)
    delta = {k: v for k, v in new.items() if old.get(k) != v and not (v is None and k not in old)}
    if delta:
        kube.patch_moed_status(ns, name, delta)
    log.info("autoscale %s/%s %s %s", ns, name, _fmt(desired), d.reason)
    return delta or None


DRAIN_MARGIN_S = 60   # past the Serve drain bound: Serve's 2 s wait loop, a tick, the dashboard's own lag


def idle_pools(obs, pools: list[str]) -> set[str]:
    """Pools that this tick's fresh observation shows serving nothing: no tokens over the last interval and no
    request queued anywhere. Only these may lose their last pod at zero (Serve keeps that replica, so it never
    drains); without fresh metrics, none."""
    if obs is None or obs.served_by_pool is None or obs.queue_depth is None or obs.queue_depth > 0:
        return set()
    return {p for p in pools if sum((obs.served_by_pool.get(p) or {}).values()) == 0}


def remove_drained(body: dict, state: State, rs: dict, rc: dict, desired: dict[str, int], now: float,
                   idle: set[str] | None = None) -> None:
    """Lower each worker group above its pool's ``desired`` replicas by the pods that hold no Serve replica, proxy
    or bundle, named in ``workersToDelete`` (autoscaling/scale_down.py); the rest waits for Serve's drain. The
    RayService's record of the group follows each removal (KubeRay copies it onto the cluster on some updates).

    The Ray dashboard is read only while some group has an excess. When it has been unreadable (every look failed)
    for longer than the pool's drain bound (Serve's graceful_shutdown_timeout_s + DRAIN_MARGIN_S), the group is
    lowered without names (KubeRay then picks the pods) and a Warning says so: a cost that never ends is worse than
    an unverified removal. When it can be read and a pod still holds something past that bound, the pod is kept and
    a Warning says why. ``idle``: pools a fresh observation shows serving nothing (``idle_pools``): only they lose
    their last pods at zero."""
    from moe_operator.autoscaling.scale_down import Removal, removal

    from . import ray_dashboard

    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    groups = {g.get("groupName"): g for g in (rc.get("spec") or {}).get("workerGroupSpecs") or []}
    excess = {p: groups[p] for p, n in desired.items() if p in groups and int(groups[p].get("replicas") or 0) > n}
    for p in list(state.drain_since):
        if p not in excess:
            del state.drain_since[p]
            state.drain_warned.pop(p, None)
    if not excess:
        state.unreadable_since = None
        return
    view, error = None, None
    try:
        view = ray_dashboard.look(ray_dashboard.dashboard_url(body, rc["metadata"]["name"]), actuator.serve_apps(rs))
        state.unreadable_since = None
    except ray_dashboard.DashboardError as exc:
        error = str(exc)
        if state.unreadable_since is None:
            state.unreadable_since = now
    pods = None
    for pool, g in excess.items():
        since = state.drain_since.setdefault(pool, now)
        bound = actuator.drain_bound_s(rs, pool, MAX_DRAIN_S) + DRAIN_MARGIN_S
        have, want = int(g.get("replicas") or 0), int(desired[pool])
        if view is None:
            blind = now - (state.unreadable_since if state.unreadable_since is not None else now)
            if blind < bound:
                log.info("autoscaler: %s/%s: pool %s keeps %d worker replica(s) above %d: %s", ns, name, pool,
                         have - want, want, error)
                continue
            plan_replicas, names, note = want, (), (
                f"pool {pool}: {have} -> {want} worker replicas without naming the pods (KubeRay picks them): the "
                f"Ray dashboard has been unreadable for {blind:.0f} s, past the drain bound of {bound} s ({error})")
        else:
            if pods is None:
                pods = kube.ray_worker_pods(ns, rc["metadata"]["name"])
            mine = [q for q in pods if (q.get("metadata") or {}).get("labels", {}).get("ray.io/group") == pool]
            # At zero Serve keeps one replica (serve_count): the others drain first, as for any scale-down; the
            # last goes with its pods only while a fresh observation shows the pool serving nothing.
            r = removal(have, int(g.get("numOfHosts") or 1), max(want, 1), mine, view)
            if want == 0 and r.replicas <= 1 and not r.waiting:
                if pool in (idle or set()):
                    r = Removal(0, tuple(sorted({*r.pods, *(q["metadata"]["name"] for q in mine
                                                            if not q["metadata"].get("deletionTimestamp"))})))
                elif r.replicas == 1:
                    r = Removal(r.replicas, r.pods, "the last replica waits for fresh metrics showing no traffic")
            plan_replicas, names, note = r.replicas, r.pods, ""
            if r.waiting:
                log.info("autoscaler: %s/%s: pool %s: %s", ns, name, pool, r.waiting)
            if r.waiting and now - since >= bound and state.drain_warned.get(pool) != have:
                state.drain_warned[pool] = have
                kube.post_event(body, "Warning", "ScaleDownWaiting",
                                f"pool {pool}: {r.waiting} {now - since:.0f} s after the scale-down, past the drain "
                                f"bound of {bound} s; the pods are kept while they hold a Serve replica or proxy")
            if plan_replicas == have:
                continue
        if kube.replace_raycluster_with_retry(
                ns, rc["metadata"]["name"], lambda cur, p=pool, h=have, n=plan_replicas, k=names:
                _group_size(cur, p) == h and actuator.raycluster_remove(cur, p, n, k)):
            # the RayService's record follows: KubeRay copies it onto the running cluster on some updates
            kube.replace_with_retry(ns, name,
                                    lambda cur, p=pool, n=plan_replicas: actuator.record_group_size(cur, p, n))
            if note:
                kube.post_event(body, "Warning", "ScaleDownUnverified", note[:1024])
            else:
                kube.post_event(body, "Normal", "DrainedWorkers",
                                f"pool {pool}: {have} -> {plan_replicas} worker replicas, deleting idle pods "
                                f"{', '.join(names)}"[:1024])
            log.info("autoscaler: %s/%s: pool %s worker replicas %d -> %d, workersToDelete %s", ns, name, pool, have,
                     plan_replicas, list(names))


def follow_serve(body: dict, now: float) -> None:
    """Worker pods for a MoEDeployment whose autoscaling is off: the active RayCluster's groups follow the Serve
    counts the reconcile rendered from the spec. KubeRay v1.5.0 does not pass a replicas-only RayService change on
    to its running RayCluster, so without this a spec's new ``replicas`` reached Serve and never the pods. Raised at
    once; lowered as a scale-down is (``remove_drained``: only pods that hold nothing), and a pool the spec sets to
    zero loses its last pods too (the spec asked for it; Serve keeps one replica it never drains). Run by the drift
    sweep; the autoscaler's tick does this for the deployments it scales."""
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    rs = kube.get_rayservice(ns, name)
    if rs is None or not kube.owned_by(rs, body["metadata"].get("uid")):
        return
    try:
        rc = kube.active_raycluster(ns, rs)
    except ApiException as exc:
        if exc.status == 403:
            return   # without rayclusters RBAC the pods cannot follow (the autoscaler's tick says the same)
        raise
    if rc is None:
        return
    want = actuator.serve_replicas(rs)
    groups = {g.get("groupName") for g in (rc.get("spec") or {}).get("workerGroupSpecs") or []}
    want = {p: n for p, n in want.items() if p in groups}
    if kube.replace_raycluster_with_retry(ns, rc["metadata"]["name"], lambda cur: actuator.raycluster_grow(cur, want)):
        log.info("autoscaling off: %s/%s worker groups raised to follow Serve: %s", ns, name, _fmt(want))
        return   # the next sweep removes any excess, from the cluster as it is then
    state = STATES.setdefault((ns, name), State())
    remove_drained(body, state, rs, rc, want, now, idle={p for p, n in want.items() if n == 0})


def _group_size(rc: dict, group: str) -> int | None:
    """The worker group's replicas in ``rc`` as read now: a removal planned on another size is not written."""
    for g in (rc.get("spec") or {}).get("workerGroupSpecs") or []:
        if g.get("groupName") == group:
            return int(g.get("replicas") or 0)
    return None


def _fmt(replicas: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in replicas.items())


def enabled(body: dict[str, Any]) -> bool:
    return bool(((body.get("spec") or {}).get("autoscaling") or {}).get("enabled", True))


def tick_due(now: float | None = None, bodies: list[dict[str, Any]] | None = None) -> int:
    """Tick every MoEDeployment of ``bodies`` (default: a fresh LIST) whose autoscaling is enabled and whose
    interval has passed; a failing one is retried 5 s later (handlers/loops.py)."""
    now = time.time() if now is None else now
    bodies = kube.list_moeds(CONFIG.namespaces) if bodies is None else bodies
    return loops.run_due(bodies, STATES, enabled=enabled, tick=tick, new_state=State, retry_s=5.0,
                         what="autoscaler", now=now)


loops.register("autoscaler", tick_due)
