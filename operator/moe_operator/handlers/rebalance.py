"""The live expert rebalancer inside the operator (issue 7 part 3, docs/placement.md "Operator loop").

Every ``spec.rebalance.intervalSeconds`` per MoEDeployment with ``rebalance.enabled`` (engine torch):
  1. ``GET /admin/v1/experts`` on the runtime (KubeRay's serve Service ``http://<rayservice>-serve-svc.<ns>.svc:8000``,
     or annotation ``serving.moe-operator.io/runtime-url`` only with ``--allow-runtime-url-annotation``) with the
     token of Secret ``<name>-runtime-admin``;
  2. per pool: window loads = per-replica differences of the cumulative counts since the last look
     (``planning.expert_window``), devices from the desired placement's shards;
  3. ``planning.rebalance.should_rebalance`` (pure) -> ``POST /admin/v1/placement``, Event ``Rebalanced``;
  4. ``status.rebalance`` written only when a move is posted, when every replica runs it, or when the kind of
     reason changes. Errors (unreachable, 404 admin off, 401) show in the status once; ``RebalanceFailed``
     Warning Events once per distinct error. Nothing here raises out of the loop.
Driven by handlers/loops.py (one LIST of MoEDeployments every 2 s shared with the autoscaler; no kopf timers,
which would add a finalizer to every object).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from moe_operator import boundedhttp
from moe_operator.api.times import parse_rfc3339, rfc3339
from moe_operator.errors import UserError
from moe_operator.planning.expert_window import (
    Counts,
    applied,
    placement_shape,
    pool_devices,
    replica_counts,
    window_loads,
)
from moe_operator.planning.rebalance import RebalanceDecision, should_rebalance

from . import admin_secret, kube, loops, metrics
from .config import CONFIG

log = logging.getLogger(__name__)
URL_ANNOTATION = "serving.moe-operator.io/runtime-url"
# Honour URL_ANNOTATION only when the operator runs with --allow-runtime-url-annotation (or env
# MOE_ALLOW_RUNTIME_URL_ANNOTATION=1): the rebalancer sends the admin token to that URL, so otherwise anyone allowed
# to annotate a MoEDeployment could receive the token without any right to read Secrets.
ALLOW_URL_ANNOTATION = os.environ.get("MOE_ALLOW_RUNTIME_URL_ANNOTATION", "") == "1"
SERVE_PORT = 8000             # KubeRay's serve Service port (DefaultServingPort)
HTTP_TIMEOUT_S = 10.0
QUIET = {"Waiting"}           # kinds that never cause a status write on their own once an entry exists


@dataclass
class PoolMemory:
    """What the loop remembers about one pool between ticks (lost on restart: the next look is a new baseline)."""

    counts: Counts | None = None
    last_applied_at: float | None = None


@dataclass
class State:
    next_at: float = 0.0
    pools: dict[str, PoolMemory] = field(default_factory=dict)
    last_error: str | None = None          # the last RebalanceFailed message posted (once per distinct error)


STATES: dict[tuple[str, str], State] = {}


@dataclass
class PoolOutcome:
    """One pool's outcome of a tick: the status entry's kind and sentence, and the figures when computed."""

    reason: str
    message: str
    placement_id: str | None = None
    decision: RebalanceDecision | None = None
    replicas: tuple[int, int] | None = None
    posted: bool = False


class AdminError(Exception):
    """The runtime admin API did not answer as the contract says; ``kind`` is the status reason."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def runtime_url(body: dict[str, Any]) -> str:
    """The runtime's base URL: the annotation when ALLOW_URL_ANNOTATION, else KubeRay v1.5.0's serve Service of the
    RayService (``utils.GenerateServeServiceName``: ``<rayservice>-serve-svc``), port 8000. The RayService is named
    after the MoEDeployment; never read from the status, which anyone with status-patch rights can point elsewhere."""
    meta = body["metadata"]
    url = (meta.get("annotations") or {}).get(URL_ANNOTATION)
    if url and ALLOW_URL_ANNOTATION:
        return url.rstrip("/")
    return f"http://{meta['name']}-serve-svc.{meta['namespace']}.svc:{SERVE_PORT}"


def ignored_annotation_note(body: dict[str, Any]) -> str:
    """The sentence added to status messages when the object has the URL annotation but it is not honoured."""
    if ALLOW_URL_ANNOTATION or not (body["metadata"].get("annotations") or {}).get(URL_ANNOTATION):
        return ""
    return (f" (annotation {URL_ANNOTATION} ignored: the operator runs without --allow-runtime-url-annotation, "
            "so the admin token goes only to KubeRay's serve Service)")


MAX_ANSWER_BYTES = 64 * 1024 * 1024   # GET /admin/v1/experts: counts per replica x layer x expert (~2 MB at 256x60x16)
# one connection pool for every runtime (keep-alive across ticks); each call ends within HTTP_TIMEOUT_S in all
# and reads at most MAX_ANSWER_BYTES (boundedhttp: a runtime that drips or floods costs its own tick only that)
_CLIENT = boundedhttp.client()


def _error_of(resp: boundedhttp.Answer) -> tuple[str, str | None]:
    """The contract's error ``(message, code)``, the message cut to 200 characters; any other body is not quoted
    (issue 14 item 10: what a URL answers never reaches a status), only said to be of another shape."""
    try:
        err = resp.json()["error"]
        return str(err["message"])[:200], err.get("code")
    except Exception:  # noqa: BLE001 - any non-contract body
        return f"HTTP {resp.status}, not the admin API's error shape", None


def _admin(method: str, url: str, path: str, token: str, **kwargs: Any) -> Any:
    """One admin API call -> the answer's JSON; AdminError (the status reason as kind) on any failure."""
    what = f"{method} {url}{path}"
    try:
        resp = boundedhttp.request(_CLIENT, method, f"{url}{path}", headers={"Authorization": f"Bearer {token}"},
                                   deadline_s=HTTP_TIMEOUT_S, max_bytes=MAX_ANSWER_BYTES, **kwargs)
    except boundedhttp.HttpError as exc:
        raise AdminError("Unreachable", f"runtime admin API at {url} unreachable: {exc}") from None
    status = resp.status
    if status >= 300:
        message, code = _error_of(resp)
        if status == 404 and code != "unknown_pool":
            raise AdminError("AdminDisabled", f"{what}: 404 ({message}): the runtime's admin API is off (env "
                             "MOE_ADMIN_TOKEN empty in the runtime) or the Serve app is not deployed yet")
        if status == 409 and code == "placement_superseded":   # someone posted after us: look again
            raise AdminError("Waiting", f"{what}: 409: {message}; the next look decides on the newer placement")
        if status == 401:
            raise AdminError("Unauthorized", f"{what}: 401: the runtime refused the token of Secret "
                             "<name>-runtime-admin; the pods read it at start (restart them after changing it)")
        raise AdminError("Failed", f"{what}: HTTP {status}: {message}")
    try:
        return resp.json()
    except ValueError:
        raise AdminError("Failed", f"{what}: the answer is not JSON") from None


def get_experts(url: str, token: str) -> dict[str, Any]:
    """``GET /admin/v1/experts`` -> the ``pools`` mapping; AdminError on any failure."""
    doc = _admin("GET", url, "/admin/v1/experts", token)
    pools = doc.get("pools") if isinstance(doc, dict) else None
    if not isinstance(pools, dict):
        raise AdminError("Failed", f"GET {url}/admin/v1/experts: not the contract's {{\"pools\": ...}} JSON")
    return pools


def post_placement(url: str, token: str, pool: str, placement: dict) -> str:
    """``POST /admin/v1/placement`` -> the new placement id; AdminError on any failure (an unknown pool: Failed)."""
    doc = _admin("POST", url, "/admin/v1/placement", token, json={"pool": pool, "placement": placement})
    if not isinstance(doc, dict) or "placementId" not in doc:
        raise AdminError("Failed", f"POST {url}/admin/v1/placement: answer lacks placementId")
    return str(doc["placementId"])


def decide_pool(pool_doc: dict[str, Any] | None, pool_name: str, settings, mem: PoolMemory,
                entry: dict | None, now: float) -> PoolOutcome:
    """The pool's outcome of this tick, from its part of the GET answer (no I/O; ``mem.counts`` is advanced)."""
    if pool_doc is None:
        mem.counts = None
        return PoolOutcome("Waiting", f"the runtime reports no replica of pool {pool_name} yet")
    placement = pool_doc.get("placement")
    pid = pool_doc.get("placementId")
    if not placement:
        return PoolOutcome("Failed", f"pool {pool_name} runs without expert shards (placement null): nothing to "
                           "rebalance", pid)
    shape = placement_shape(placement)
    counts = replica_counts(pool_doc)
    loads = window_loads(mem.counts, counts, shape)[0]   # (the count of restarted replicas is not needed here)
    mem.counts = counts
    done, total = applied(pool_doc)
    if total and done < total:
        return PoolOutcome("Rebalancing", f"{done} of {total} replicas run placement {pid}", pid,
                           replicas=(done, total))
    if entry is not None and entry.get("reason") == "Rebalancing" and total and entry.get("placementId") == pid:
        return PoolOutcome("Rebalanced", f"every replica ({total}) runs placement {pid}", pid,
                           replicas=(done, total))
    if loads is None:
        return PoolOutcome("Waiting", "first look at the expert loads: the window starts now", pid,
                           replicas=(done, total))
    # one pool = one accelerator type: every device has the same speed, and imbalance and gain are ratios, so 1.0
    devices = pool_devices(placement, 1.0, settings.redundant_slots)
    d = should_rebalance(loads, placement, devices, redundant_slots=settings.redundant_slots,
                         min_gain=settings.min_gain, last_applied_at=mem.last_applied_at,
                         cooldown_s=float(settings.cooldown_seconds), now=now)
    if d.kind == "apply":
        return PoolOutcome("Rebalancing", d.reason, pid, d, (done, total))
    if d.kind == "no_traffic":
        return PoolOutcome("NoTraffic", d.reason, pid, d, (done, total))
    if d.kind == "cooldown":   # keep whatever the status says
        return PoolOutcome(entry.get("reason") if entry else "Rebalanced", d.reason, pid, d, (done, total))
    return PoolOutcome("Balanced", d.reason, pid, d, (done, total))


def _entry(pool: str, w: PoolOutcome, now: float, old: dict | None) -> dict[str, Any]:
    e: dict[str, Any] = {k: v for k, v in (old or {}).items()}
    e.update({"pool": pool, "reason": w.reason, "message": w.message[:2048], "time": rfc3339(now)})
    if w.placement_id:
        e["placementId"] = w.placement_id
    if w.decision is not None and w.decision.placement is not None:
        e.update({"imbalanceBefore": round(w.decision.imbalance_before, 4),
                  "imbalanceAfter": round(w.decision.imbalance_after, 4), "gain": round(w.decision.gain, 4)})
    if w.replicas is not None:
        e["replicasApplied"], e["replicasTotal"] = w.replicas
    if w.posted:
        e["lastRebalanceTime"] = rfc3339(now)
    return e


def tick(body: dict[str, Any], now: float | None = None) -> dict | None:
    """One look at one MoEDeployment's runtime; returns the status delta written (None: nothing written)."""
    now = time.time() if now is None else now
    begun = loops.begin_tick(body, STATES, State)
    if begun is None:
        return None
    ns, name, state, dep = begun
    settings = dep.spec.rebalance
    state.next_at = now + float(settings.interval_seconds)
    if not settings.enabled or dep.spec.engine != "torch":
        return None
    old_list = list((body.get("status") or {}).get("rebalance") or [])
    old = {e.get("pool"): e for e in old_list}
    outcomes: dict[str, PoolOutcome] = {}
    url = runtime_url(body)
    try:
        token = admin_secret.read_token(ns, name, body["metadata"].get("uid"))
        if token is None:   # not created yet (the reconcile makes it before the RayService), a stranger's, or no RBAC
            raise AdminError("Waiting", f"waiting for Secret {name}-runtime-admin owned by this MoEDeployment (the "
                             "operator creates it when rebalance is enabled; it needs get/create on secrets; one "
                             "made by anyone else is refused: delete it)")
        if not token:
            raise AdminError("Unauthorized", f"Secret {name}-runtime-admin has an empty 'token': put one in it "
                             "(and restart the pods) or delete it so the operator creates one")
        answer = get_experts(url, token)
        for p in dep.spec.pools:
            mem = state.pools.setdefault(p.name, PoolMemory())
            if mem.last_applied_at is None:
                mem.last_applied_at = parse_rfc3339((old.get(p.name) or {}).get("lastRebalanceTime"))
            try:
                w = decide_pool(answer.get(p.name), p.name, settings, mem, old.get(p.name), now)
            except UserError as exc:
                w = PoolOutcome("Failed", f"pool {p.name}: {exc}")
            if w.decision is not None and w.decision.apply:
                try:
                    new_id = post_placement(url, token, p.name, w.decision.placement)
                except AdminError as exc:
                    w = PoolOutcome(exc.kind, f"pool {p.name}: {exc}", w.placement_id, w.decision, w.replicas)
                else:
                    mem.last_applied_at = now
                    d = w.decision
                    w = PoolOutcome("Rebalancing", f"posted placement {new_id}: {d.reason}", new_id, d,
                                    (0, w.replicas[1]), posted=True)
                    kube.post_event(body, "Normal", "Rebalanced",
                                    f"pool {p.name}: imbalance {d.imbalance_before:.3f} -> {d.imbalance_after:.3f}, "
                                    f"step time {d.gain:.1%} shorter; placement {new_id}")
            outcomes[p.name] = w
    except AdminError as exc:
        for m in state.pools.values():
            m.counts = None   # the window restarts once the runtime answers again
        outcomes = {p.name: PoolOutcome(exc.kind, str(exc)) for p in dep.spec.pools}
    note = ignored_annotation_note(body)
    if note:
        for w in outcomes.values():
            w.message += note
    failures = sorted({w.message for w in outcomes.values() if w.reason in ("Failed", "Unauthorized")})
    if failures and state.last_error != failures[0]:
        kube.post_event(body, "Warning", "RebalanceFailed", failures[0])
    state.last_error = failures[0] if failures else None
    new_list, write = [], False
    for p in dep.spec.pools:
        w, prev = outcomes[p.name], old.get(p.name)
        if prev is None or w.posted or (w.reason != prev.get("reason") and w.reason not in QUIET):
            new_list.append(_entry(p.name, w, now, prev))
            write = True
        elif prev is not None:
            new_list.append(prev)
    if write:
        kube.patch_moed_status(ns, name, {"rebalance": new_list})
    for p, w in outcomes.items():
        if w.decision is not None and w.reason != "NoTraffic":   # no traffic: no imbalance to speak of
            metrics.record_rebalance(ns, name, p, w.decision, w.posted)
        log.info("rebalance %s/%s pool %s: %s: %s", ns, name, p, w.reason, w.message)
    return {"rebalance": new_list} if write else None


def _enabled(body: dict[str, Any]) -> bool:
    return bool(((body.get("spec") or {}).get("rebalance") or {}).get("enabled"))


def tick_due(now: float | None = None, bodies: list[dict[str, Any]] | None = None) -> int:
    """Tick every MoEDeployment of ``bodies`` (default: a fresh LIST) with rebalance enabled whose interval has
    passed; a failing one is retried 10 s later (handlers/loops.py)."""
    now = time.time() if now is None else now
    bodies = kube.list_moeds(CONFIG.namespaces) if bodies is None else bodies
    return loops.run_due(bodies, STATES, enabled=_enabled, tick=tick, new_state=State, retry_s=10.0,
                         what="rebalance", now=now)


loops.register("rebalancer", tick_due)
