"""Which worker pods a scale-down may delete: only those that hold no Serve replica (issue 13). Pure.

The actuator lowers a pool's Serve ``num_replicas`` first and leaves the RayCluster's worker group as it is; Serve
then picks the replicas to stop and lets them drain (docs/operator.md, "Scale-down"). Each later tick reads Ray's
view of the cluster through the dashboard (``handlers/ray_dashboard.py``) and removes the group's excess pods
here: only pods whose IP holds no Serve replica (any application, any state: a STOPPING replica is still
draining) and no bundle of a placement group (a multi-host replica's other hosts, Ray Serve names each replica's
placement group after the replica), named in ``scaleStrategy.workersToDelete`` with ``replicas`` lowered by as
many whole replicas (all ``numOfHosts`` pods of one replica go together). KubeRay v1.5.0 deletes the named pods
first and only then compares the count (``raycluster_controller.go``), so nothing is deleted at random.

A replica Serve has not placed yet (no node) could land on a pod that looks idle: then nothing is removed this
tick from the pods where its deployment runs. Inputs are the dashboard's JSON as Ray 2.60 answers it
(``GET /api/serve/applications/``, ``/api/v0/placement_groups?detail=1``, ``/api/v0/nodes``); anything malformed
raises ValueError, and the caller keeps the pods.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping


@dataclass(frozen=True)
class RayView:
    """What the Ray cluster holds, by node IP (the pod IP of a KubeRay worker).

    ``busy_ips``: nodes with a Serve replica (any state: a STOPPING one is still draining), a placement-group bundle
    or a Serve proxy that is not DRAINED (a proxy keeps the streams that entered through it, to replicas anywhere,
    until they end: Serve drains it once its node holds no replica, then removes it). ``unplaced``: deployments
    (``app/deployment``) with a replica or bundle on no node yet; ``on``: per node IP, the deployments with a
    replica there. An unplaced replica blocks removals only from pods where its deployment runs (it may land on
    one of them), so a pool parked at zero, whose one Serve replica can never be placed, blocks nothing elsewhere.
    ``blocked``: why nothing may be removed anywhere (a replica recovering after a controller restart, whose node
    is unknown for a while); "" when removals may go ahead."""

    busy_ips: frozenset[str]
    unplaced: frozenset[str] = frozenset()
    on: Mapping[str, frozenset[str]] = field(default_factory=dict)
    blocked: str = ""


_NAME = re.compile(r"[^A-Za-z0-9_.:#/-]")
_STATES = {"STARTING", "UPDATING", "RECOVERING", "RUNNING", "STOPPING", "STOPPED", "PENDING_MIGRATION"}


def shown(text: Any) -> str:
    """A name from the dashboard as a message may quote it: a name's characters only, at most 80 (the answer comes
    from the tenant's own Ray, and the message reaches an Event)."""
    return _NAME.sub("?", str(text))[:80]


def _replica_deployment(name: Any) -> str | None:
    """``app/deployment`` of a Serve replica actor or placement group name (``SERVE_REPLICA::app#dep#id``)."""
    if not isinstance(name, str) or not name.startswith("SERVE_REPLICA::"):
        return None
    parts = name[len("SERVE_REPLICA::"):].split("#")
    return f"{parts[0]}/{parts[1]}" if len(parts) == 3 else None


def _state_rows(answer: Any, what: str) -> list[dict]:
    """The rows of a Ray state API answer (``{"result": true, "data": {"result": {"result": [...]}}}``)."""
    try:
        if answer.get("result") is not True:
            raise ValueError(f"{what}: the state API reported a failure")
        rows = answer["data"]["result"]["result"]
    except (AttributeError, KeyError, TypeError) as exc:
        raise ValueError(f"{what}: not a Ray state API answer ({type(exc).__name__})") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{what}: result is not a list of objects")
    got = answer["data"]["result"]
    # Ray's funnel: total -> num_after_truncation (the data source's cap) -> num_filtered -> len(result) (the limit)
    total, kept, matched = got.get("total"), got.get("num_after_truncation"), got.get("num_filtered")
    if (isinstance(total, int) and isinstance(kept, int) and kept < total) or \
            (isinstance(matched, int) and matched > len(rows)) or \
            (not isinstance(matched, int) and isinstance(total, int) and total > len(rows)):
        raise ValueError(f"{what}: the answer is truncated")
    if got.get("partial_failure_warning"):
        raise ValueError(f"{what}: the state API could not reach every source")
    return rows


def ray_view(serve_details: Any, placement_groups: Any, nodes: Any, apps: Iterable[str] = ()) -> RayView:
    """Busy node IPs from the dashboard's three answers; ValueError when one is not what Ray 2.60 sends, when Serve's
    controller is not running (it then answers with no applications: everything would look idle) or when an
    application of ``apps`` (the RayService's serveConfigV2) is missing from Serve's answer."""
    if not isinstance(serve_details, dict) or not isinstance(serve_details.get("applications"), dict):
        raise ValueError("serve details: no applications map")
    if not (serve_details.get("controller_info") or {}).get("actor_id"):
        raise ValueError("serve details: Serve's controller is not running (no controller_info)")
    missing = sorted(set(apps) - set(serve_details["applications"]))
    if missing:
        raise ValueError(f"serve details: application(s) {', '.join(missing)} not reported yet")
    ip_of = {}
    for n in _state_rows(nodes, "nodes"):
        if isinstance(n.get("node_id"), str) and isinstance(n.get("node_ip"), str):
            ip_of[n["node_id"]] = n["node_ip"]
    busy: set[str] = set()
    unplaced: set[str] = set()
    on: dict[str, set[str]] = {}
    blocked = ""
    for app_name, app in serve_details["applications"].items():
        deployments = (app or {}).get("deployments") if isinstance(app, dict) else None
        if not isinstance(deployments, dict):
            raise ValueError("serve details: an application without a deployments map")
        for dep_name, dep in deployments.items():
            for r in (dep or {}).get("replicas") or []:
                ip = r.get("node_ip") or ip_of.get(r.get("node_id") or "")
                if ip:
                    busy.add(ip)
                    on.setdefault(ip, set()).add(f"{app_name}/{dep_name}")
                elif r.get("state") == "STARTING":
                    unplaced.add(f"{app_name}/{dep_name}")   # waiting for resources: lands where its kind fits
                else:   # RECOVERING after a controller restart, or another state without a node: anywhere
                    state = r.get("state") if r.get("state") in _STATES else "in an unknown state"
                    blocked = f"a replica of {shown(f'{app_name}/{dep_name}')} is {state} on an unknown node"
    for proxy in (serve_details.get("proxies") or {}).values():
        if isinstance(proxy, dict) and proxy.get("status") != "DRAINED":
            ip = proxy.get("node_ip") or ip_of.get(proxy.get("node_id") or "")
            if ip:
                busy.add(ip)
    for pg in _state_rows(placement_groups, "placement groups"):
        if pg.get("state") == "REMOVED":
            continue
        for b in pg.get("bundles") or []:
            node = b.get("node_id") if isinstance(b, dict) else None
            if node is None:
                owner = _replica_deployment(pg.get("name"))
                if owner is not None and pg.get("state") != "CREATED":
                    unplaced.add(owner)   # a pending replica group may still take an idle-looking node
                continue
            if node not in ip_of:
                raise ValueError("a placement group has a bundle on a node missing from the node list")
            busy.add(ip_of[node])
    return RayView(frozenset(busy), frozenset(unplaced), {ip: frozenset(d) for ip, d in on.items()}, blocked)


@dataclass(frozen=True)
class Removal:
    """The worker group's new ``replicas`` and the pods to name in ``workersToDelete``."""

    replicas: int
    pods: tuple[str, ...]
    waiting: str = ""           # why fewer (or none) were removed this tick; "" when the excess is gone


def _live(pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """The pod's Ready condition is True and it is not terminating (handlers/readiness.py counts with it too)."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


REPLICA_NAME_LABEL = "ray.io/worker-group-replica-name"   # KubeRay's, with its RayMultiHostIndexing gate


def removal(group_replicas: int, hosts: int, target: int, pods: Iterable[Mapping[str, Any]],
            view: RayView) -> Removal:
    """The excess of a worker group (``group_replicas`` replicas of ``hosts`` pods each, ``target`` wanted) that can
    go now: whole replicas' worth of pods holding nothing, not-Ready pods first, then by name (deterministic).

    Where KubeRay groups a multi-host replica's pods (label ``ray.io/worker-group-replica-name``, KubeRay's
    ``RayMultiHostIndexing`` gate: naming one pod deletes its whole group), only groups whose every pod is idle go;
    without it KubeRay counts pods one by one and any ``hosts`` idle pods make a replica's worth."""
    hosts = max(1, int(hosts))
    excess = int(group_replicas) - int(target)
    if excess <= 0:
        return Removal(int(group_replicas), ())
    if view.blocked:
        return Removal(int(group_replicas), (), view.blocked)
    live = _live(pods)
    here = set().union(*(view.on.get((p.get("status") or {}).get("podIP") or "", frozenset()) for p in live))
    pending = sorted(here & view.unplaced)
    if pending:
        return Removal(int(group_replicas), (), f"a replica of {', '.join(shown(p) for p in pending[:3])} is not "
                                                 "placed yet")

    def idle(p) -> bool:
        return (p.get("status") or {}).get("podIP") not in view.busy_ips

    def name(p) -> str:
        return p["metadata"]["name"]

    grouped: dict[str, list] = {}
    for p in live:
        key = ((p.get("metadata") or {}).get("labels") or {}).get(REPLICA_NAME_LABEL) if hosts > 1 else None
        grouped.setdefault(key or name(p), []).append(p)
    if hosts > 1 and any(k != name(ps[0]) for k, ps in grouped.items()):   # KubeRay's replica groups: whole only
        units = [sorted(ps, key=name) for ps in grouped.values() if all(idle(p) for p in ps)]
        units.sort(key=lambda ps: (all(pod_ready(p) for p in ps), name(ps[0])))
        n = min(excess, len(units))
        chosen = tuple(name(p) for ps in units[:n] for p in ps)
        spare = len(units)
    else:
        pool = sorted((p for p in live if idle(p)), key=lambda p: (pod_ready(p), name(p)))
        n = min(excess, len(pool) // hosts)
        chosen = tuple(name(p) for p in pool[:n * hosts])
        spare = len(pool) // hosts
    waiting = "" if n == excess else (f"{excess - n} replica(s) still draining ({spare} idle replica(s) of "
                                      f"{hosts} pod(s))")
    return Removal(int(group_replicas) - n, chosen, waiting)
