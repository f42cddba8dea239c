"""Ready replicas per pool, counted from the RayCluster's worker pods (issue 13: a status that tells the truth).

A replica of a pool is ready when all ``numOfHosts`` of its pods are Ready and none is terminating. KubeRay v1.5.0's
RayCluster status has only cluster-wide worker counts (``readyWorkerReplicas``), so per-pool figures come from the
pods (label ``ray.io/group``). The reconcile's status and the autoscaler both read this, so neither invents
readiness from the desired count.
"""
from __future__ import annotations

from typing import Any, Iterable

from . import kube


def _ready(pod: dict[str, Any]) -> bool:
    meta, st = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])


def ready_by_group(rc: dict[str, Any], pods: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Whole ready replicas per worker group of RayCluster ``rc`` from its worker ``pods`` (pure)."""
    name = (rc.get("metadata") or {}).get("name")
    groups = {g.get("groupName"): g for g in (rc.get("spec") or {}).get("workerGroupSpecs") or []}
    ready_pods = {g: 0 for g in groups}
    for p in pods:
        labels = (p.get("metadata") or {}).get("labels") or {}
        group = labels.get("ray.io/group")
        if group in ready_pods and labels.get("ray.io/cluster") == name and _ready(p):
            ready_pods[group] += 1
    out = {}
    for g, spec in groups.items():
        hosts = max(1, int(spec.get("numOfHosts") or 1))
        out[g] = min(ready_pods[g] // hosts, int(spec.get("replicas") or 0))
    return out


def of_rayservice(namespace: str, rayservice: dict[str, Any]) -> dict[str, int] | None:
    """``observed`` for the RayCluster serving ``rayservice`` (the reconcile has the RayService, not the cluster)."""
    try:
        rc = kube.active_raycluster(namespace, rayservice)
    except Exception:  # noqa: BLE001 - a report: RBAC, an API error or a dropped connection must not fail a reconcile
        return None
    return observed(namespace, rc)


def observed(namespace: str, rc: dict[str, Any] | None) -> dict[str, int] | None:
    """Ready replicas per pool of the active RayCluster ``rc``; None when it or its pods cannot be read (no RBAC for
    pods, API error): callers then say nothing better than what they knew, rather than guess."""
    if not rc:
        return None
    try:
        pods = kube.ray_worker_pods(namespace, rc["metadata"]["name"])
    except Exception:  # noqa: BLE001 - RBAC (403), an API error or a dropped connection: no figure, not a guess
        return None
    return ready_by_group(rc, pods)
