"""Actuation as data: desired replicas per pool -> a JSON merge patch (RFC 7386) for the RayService.

Pure: takes the current RayService object (a dict as the API server returns it) and returns the patch, or
None when nothing would change, so the caller patches only when the decision changes. It touches only
  * spec.serveConfigV2, the pool's replica count, which lives in one of two places:
    - ``engine: torch``: ``num_replicas`` of the Serve deployment ``engine-<pool>`` (docs/contracts.md section 3);
    - ``engine: vllm`` (Ray Serve LLM apps, ``import_path: ray.serve.llm:...``): ``deployment_config.num_replicas``
      of the pool's ``LLMConfig`` in the app's ``args`` (``llm_configs[]`` or, for data-parallel apps,
      ``llm_config``), found by the pool's custom resource ``pool-<pool>`` in ``placement_group_config``.
      Ray Serve LLM turns it into the LLM server deployment's ``num_replicas`` (for a data-parallel app it counts
      DP groups; Serve runs ``num_replicas x data_parallel_size`` replicas). An ``autoscaling_config`` there
      would be a second autoscaler on the same deployment: refused;
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
    targets = _replica_holders(config)
    missing = sorted(set(replicas) - set(targets))
    if missing:
        raise UserError(f"serveConfigV2 has no replica count for pool {', '.join(missing)} (no Serve deployment "
                        f"{', '.join(engine_deployment(p) for p in missing)} and no Ray Serve LLM config using "
                        f"resource {', '.join(pool_resource(p) for p in missing)}); "
                        "re-render the RayService from the MoEDeployment")
    serve_changed = False
    for pool, n in replicas.items():
        for holder in targets[pool]:
            if holder.get("num_replicas") != int(n):
                holder["num_replicas"] = int(n)
                serve_changed = True

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
    """Current Serve replicas per pool read back from serveConfigV2 (torch or vLLM apps; for status and tests).

    For a data-parallel vLLM app this is the LLMConfig's count, i.e. DP groups, the unit the autoscaler sizes.
    """
    raw = (rayservice.get("spec") or {}).get("serveConfigV2") or ""
    config = yaml.safe_load(raw) if isinstance(raw, str) else copy.deepcopy(raw)
    out = {}
    for pool, holders in _replica_holders(config or {}, strict=False).items():
        n = holders[0].get("num_replicas", 1)
        out[pool] = int(n) if isinstance(n, int) else 0
    return out


def pool_resource(pool: str) -> str:
    """The custom Ray resource a pool's worker group advertises and its replicas request (contracts section 3)."""
    return f"pool-{pool}"


def _llm_configs(app: Mapping[str, Any]) -> list[dict]:
    """The inline LLMConfig dicts of a Ray Serve LLM app (build_openai_app: llm_configs; build_dp_openai_app: llm_config)."""
    if not str(app.get("import_path", "")).startswith("ray.serve.llm:"):
        return []
    args = app.get("args") or {}
    if isinstance(args.get("llm_config"), dict):
        return [args["llm_config"]]
    return [c for c in args.get("llm_configs") or [] if isinstance(c, dict)]   # a str is a file path: not ours


def _llm_pool(cfg: Mapping[str, Any]) -> str | None:
    """The pool an LLMConfig runs on: its bundles request ``pool-<pool>`` (render/serve.py llm_config)."""
    bundle = (cfg.get("placement_group_config") or {}).get("bundle_per_worker") or {}
    pools = [k[len("pool-"):] for k in bundle if isinstance(k, str) and k.startswith("pool-")]
    return pools[0] if len(pools) == 1 else None


def _replica_holders(config: Mapping[str, Any], strict: bool = True) -> dict[str, list[dict]]:
    """Per pool, the dicts whose ``num_replicas`` is that pool's replica count (in place, inside ``config``).

    strict: raise UserError for an LLMConfig the autoscaler must not size (Serve autoscaling_config set).
    """
    out: dict[str, list[dict]] = {}
    for app in config.get("applications") or []:
        for dep in app.get("deployments") or []:
            name = str(dep.get("name", ""))
            if name.startswith("engine-"):
                out.setdefault(name[len("engine-"):], []).append(dep)
        for cfg in _llm_configs(app):
            pool = _llm_pool(cfg)
            if pool is None:
                continue
            dc = cfg.get("deployment_config")
            if not isinstance(dc, dict):
                dc = cfg["deployment_config"] = {}
            if strict and "autoscaling_config" in dc:
                raise UserError(f"application {app.get('name')}: the LLMConfig of pool {pool} sets "
                                "deployment_config.autoscaling_config; Ray Serve's autoscaler and ours would fight "
                                "over its replicas: remove it (the operator renders num_replicas)")
            out.setdefault(pool, []).append(dc)
    return out
