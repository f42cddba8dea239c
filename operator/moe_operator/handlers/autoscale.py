"""The autoscaler inside the operator: every ``intervalSeconds`` per MoEDeployment, observe -> decide -> act.

Driven by handlers/loops.py (one LIST of MoEDeployments every 2 s shared with the rebalancer), not a kopf timer
per object: timers put a finalizer on every MoEDeployment. A tick:
  1. reads the spec's metrics source (scrape URL, Prometheus URL, else env ``MOE_PROMETHEUS_URL``);
  2. ``policy.decide`` (pure) with the object's history kept in memory here (rebuilt from status.pools and
     status.lastDecisions on the first tick after a start, so a restart does not scale down early);
  3. when the replicas change: patches the RayService (Serve ``num_replicas`` and worker-group replicas, the
     recorded desired state) AND the active RayCluster's worker-group replicas, because KubeRay v1.5.0 does not
     copy replica-only RayService changes to the running cluster; posts one Event;
  4. writes the status keys that changed (none changed: no write).
Stale or missing metrics: ``decide`` holds (never scales down) and the status says why.
"""
from __future__ import annotations

import copy
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from kubernetes.client.rest import ApiException

from moe_operator.autoscaling import actuator, report
from moe_operator.autoscaling.from_spec import pool_models_from_spec, settings_from_spec
from moe_operator.autoscaling.restore import restore_history
from moe_operator.autoscaling.step import observe_and_decide

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


def cluster_patch(rc: dict, replicas: dict[str, int]) -> bool:
    """Set the RayCluster's worker-group replicas (min/max kept consistent) in place; True when it changed."""
    changed = False
    for g in (rc.get("spec") or {}).get("workerGroupSpecs") or []:
        n = replicas.get(g.get("groupName"))
        if n is None:
            continue
        want = {"replicas": n, "minReplicas": min(int(g.get("minReplicas", n)), n),
                "maxReplicas": max(int(g.get("maxReplicas", n)), n)}
        for k, v in want.items():
            if g.get(k) != v:
                g[k] = v
                changed = True
    return changed


def merge(target: dict, patch: dict) -> dict:
    """RFC 7386 JSON merge patch applied in place (lists replaced whole, None deletes)."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)
    return target


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
            patch = actuator.rayservice_patch(rs, desired)
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
            kube.replace_with_retry(ns, name, lambda cur: bool(merge(cur, patch)) or True)
        if rc is not None:
            kube.replace_raycluster_with_retry(ns, rc["metadata"]["name"], lambda cur: cluster_patch(cur, desired))
        word = "ScaledUp" if sum(desired.values()) > sum(current.get(p, 0) for p in pool_names) else "ScaledDown"
        kube.post_event(body, "Normal", word, f"{_fmt(desired)}: {d.reason}"[:1024])
        metrics.DECISIONS.labels(ns, name, d.reason.split(":")[0].split(" ")[0] or "scale").inc()

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


def _fmt(replicas: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in replicas.items())


def _enabled(body: dict[str, Any]) -> bool:
    return bool(((body.get("spec") or {}).get("autoscaling") or {}).get("enabled", True))


def tick_due(now: float | None = None, bodies: list[dict[str, Any]] | None = None) -> int:
    """Tick every MoEDeployment of ``bodies`` (default: a fresh LIST) whose autoscaling is enabled and whose
    interval has passed; a failing one is retried 5 s later (handlers/loops.py)."""
    now = time.time() if now is None else now
    bodies = kube.list_moeds(CONFIG.namespaces) if bodies is None else bodies
    return loops.run_due(bodies, STATES, enabled=_enabled, tick=tick, new_state=State, retry_s=5.0,
                         what="autoscaler", now=now)


loops.register("autoscaler", tick_due)
