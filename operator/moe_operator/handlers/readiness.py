"""Ready replicas per pool, counted from the RayCluster's worker pods (issue 13: a status that tells the truth).

A replica of a pool is ready when all ``numOfHosts`` of its pods are Ready and none is terminating. KubeRay v1.5.0's
RayCluster status has only cluster-wide worker counts (``readyWorkerReplicas``), so per-pool figures come from the
pods (label ``ray.io/group``). The reconcile's status and the autoscaler both read this, so neither invents
readiness from the desired count.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from moe_operator.autoscaling.scale_down import pod_ready  # noqa: F401 - podwatch and tests use it here

from . import kube


def ready_by_group(rc: dict[str, Any], pods: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Whole ready replicas per worker group of RayCluster ``rc`` from its worker ``pods`` (pure)."""
    name = (rc.get("metadata") or {}).get("name")
    groups = {g.get("groupName"): g for g in (rc.get("spec") or {}).get("workerGroupSpecs") or []}
    ready_pods = {g: 0 for g in groups}
    for p in pods:
        labels = (p.get("metadata") or {}).get("labels") or {}
        group = labels.get("ray.io/group")
        if group in ready_pods and labels.get("ray.io/cluster") == name and pod_ready(p):
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


def for_autoscaler(pools: Iterable[str], counted: Mapping[str, int] | None, runtime: Mapping[str, int] | None,
                   fallback: Mapping[str, int]) -> dict[str, int]:
    """The ready replicas the autoscaler decides with, per pool (pure).

    ``counted``: from the worker pods (``observed``; None when they cannot be read); ``runtime``: the runtime's
    ``moe_ready_replicas`` gauge where it reports a pool (None: no observation); ``fallback``: the RayCluster's own
    figure (the autoscaler's ``_ready``), used only when the pods cannot be read. A replica counts when its pods are
    Ready AND (where the runtime reports the pool) the runtime serves with it: the smaller of the two, so a killed
    pod lowers the count at once, not when the runtime's gauge (up to 10 s of placement-board liveness plus a
    Prometheus scrape) notices."""
    out = {}
    for p in pools:
        n = counted.get(p, 0) if counted is not None else fallback.get(p, 0)
        if runtime is not None and p in runtime:
            served = int(runtime[p])
            n = min(n, served) if counted is not None else served
        out[p] = int(n)
    return out
