"""Actuation as data: desired replicas per pool -> a JSON merge patch (RFC 7386) for the RayService.

Pure: takes the current RayService object (a dict as the API server returns it) and returns the patch, or
None when nothing would change, so the caller patches only when the decision changes. It touches only
  * spec.serveConfigV2: ``num_replicas`` of the Serve deployment ``engine-<pool>`` (docs/contracts.md section 3);
    Ray Serve applies a replica-count change in place;
  * spec.rayClusterConfig.workerGroupSpecs[*].replicas/minReplicas/maxReplicas of the pool's worker group.
KubeRay leaves these fields out of the hash that decides whether a RayService needs a new RayCluster
(``Replicas``, ``MinReplicas``, ``MaxReplicas``, ``WorkersToDelete`` are muted), so the cluster is scaled,
never replaced. A merge patch replaces lists whole, so the worker group list is sent back complete and
otherwise byte-for-byte what the server holds.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

import yaml

from moe_operator.errors import UserError


def engine_deployment(pool: str) -> str:
    """Name of the pool's Serve deployment (contracts section 3)."""
    return f"engine-{pool}"


def _group_for(groups: list[dict], pool: str) -> dict | None:
    for g in groups:
        if g.get("groupName") in (pool, f"pool-{pool}", f"{pool}-workers"):
            return g
    return None


def rayservice_patch(rayservice: Mapping[str, Any], replicas: Mapping[str, int],
                     workers_per_replica: Mapping[str, int] | None = None) -> dict | None:
    """Merge patch that sets Serve replicas and worker-group sizes per pool, or None if already there.

    replicas: desired Serve replicas per pool; workers_per_replica: worker pods one Serve replica needs
    (default 1). Worker groups get replicas = minReplicas = replicas x workers (so the Ray autoscaler keeps
    them) and maxReplicas raised when below. Raises UserError when a pool has no engine deployment.
    """
    spec = rayservice.get("spec") or {}
    wpr = workers_per_replica or {}
    raw = spec.get("serveConfigV2")
    if not raw:
        raise UserError("RayService has no spec.serveConfigV2 to scale")
    config = yaml.safe_load(raw) if isinstance(raw, str) else copy.deepcopy(raw)
    found = set()
    serve_changed = False
    for app in config.get("applications") or []:
        for dep in app.get("deployments") or []:
            for pool, n in replicas.items():
                if dep.get("name") == engine_deployment(pool):
                    found.add(pool)
                    if dep.get("num_replicas") != int(n):
                        dep["num_replicas"] = int(n)
                        serve_changed = True
    missing = sorted(set(replicas) - found)
    if missing:
        raise UserError(f"serveConfigV2 has no deployment {', '.join(engine_deployment(p) for p in missing)}; "
                        "re-render the RayService from the MoEDeployment")

    groups = copy.deepcopy((spec.get("rayClusterConfig") or {}).get("workerGroupSpecs") or [])
    groups_changed = False
    for pool, n in replicas.items():
        g = _group_for(groups, pool)
        if g is None:
            continue  # a pool without its own group (e.g. local CPU) scales in Serve only
        workers = int(n) * int(wpr.get(pool, 1))
        want = {"replicas": workers, "minReplicas": workers, "maxReplicas": max(int(g.get("maxReplicas", workers)), workers)}
        for k, v in want.items():
            if g.get(k) != v:
                g[k] = v
                groups_changed = True

    patch: dict = {}
    if serve_changed:
        patch["serveConfigV2"] = yaml.safe_dump(config, sort_keys=False) if isinstance(raw, str) else config
    if groups_changed:
        patch["rayClusterConfig"] = {"workerGroupSpecs": groups}
    return {"spec": patch} if patch else None


def serve_replicas(rayservice: Mapping[str, Any]) -> dict[str, int]:
    """Current Serve replicas per pool read back from serveConfigV2 (for status and tests)."""
    raw = (rayservice.get("spec") or {}).get("serveConfigV2") or ""
    config = yaml.safe_load(raw) if isinstance(raw, str) else raw
    out = {}
    for app in (config or {}).get("applications") or []:
        for dep in app.get("deployments") or []:
            name = dep.get("name", "")
            if name.startswith("engine-"):
                out[name[len("engine-"):]] = int(dep.get("num_replicas", 0))
    return out
