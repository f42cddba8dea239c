"""Actuation as data: desired replicas per pool -> a JSON merge patch (RFC 7386) for the RayService.

Pure: takes the current RayService object (a dict as the API server returns it) and returns the patch, or
None when nothing would change, so the caller patches only when the decision changes. It touches only
  * spec.serveConfigV2, the pool's replica count, always a ``deployments[]`` override, never ``args`` (a changed
    ``args`` changes the app's code version and Serve replaces every replica; an override only adds or removes):
    - ``engine: torch``: ``num_replicas`` of the Serve deployment ``engine-<pool>`` (docs/contracts.md section 3);
    - ``engine: vllm`` (Ray Serve LLM apps, ``import_path: ray.serve.llm:...``): ``num_replicas`` of the
      override naming the pool's LLM server deployment (``LLMServer:<model>``, ``DPServer:<model>``:
      render/llm_names.py), added when an older render lacks it. The pool's LLMConfig in ``args`` (found by its
      custom resource ``pool-<pool>`` in ``placement_group_config``) gives the name and keeps the spec's start
      count. For a data-parallel app the autoscaler counts DP groups and the override holds groups x
      ``data_parallel_size`` Serve replicas (what Ray Serve LLM's builder would have made of the LLMConfig's
      count). An ``autoscaling_config`` in the LLMConfig would be a second autoscaler on the same deployment:
      refused, and so is an LLMConfig without ``num_replicas`` (Ray Serve LLM then adds its own autoscaler);
  * spec.rayClusterConfig.workerGroupSpecs[*].replicas/minReplicas/maxReplicas of the pool's worker group.
The active RayCluster's worker groups (``raycluster_grow``, ``raycluster_remove``) follow Serve: raised with a
scale-up, lowered only once the pods to remove hold no Serve replica (autoscaling/scale_down.py), by name.
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
from moe_operator.render.inputs import pool_resource, resource_pool
from moe_operator.render.llm_names import llm_deployment_name, serve_count, serve_replicas_per_replica


def engine_deployment(pool: str) -> str:
    """Name of the pool's Serve deployment (contracts section 3)."""
    return f"engine-{pool}"


def _group_for(groups: list[dict], pool: str) -> dict | None:
    for g in groups:
        if g.get("groupName") in (pool, pool_resource(pool), f"{pool}-workers"):
            return g
    return None


def rayservice_patch(rayservice: Mapping[str, Any], replicas: Mapping[str, int],
                     workers_per_replica: Mapping[str, int] | None = None,
                     group_floor: Mapping[str, int] | None = None) -> dict | None:
    """Merge patch that sets Serve replicas and worker-group sizes per pool, or None if already there.

    replicas: desired replicas per pool (Serve replicas; DP groups for a data-parallel vLLM pool, written to its
    override as groups x data_parallel_size); workers_per_replica: worker pods one such replica needs (default 1).
    Worker groups get replicas = minReplicas = replicas x workers (so the Ray autoscaler keeps them) and maxReplicas
    raised when below; never below ``group_floor`` (per group name: the running RayCluster's groups, which drop only
    as their pods drain, ``record_group_size``). Raises UserError when a pool has no engine deployment or LLMConfig.
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
        for holder, per in targets[pool]:
            if holder.get("num_replicas") != serve_count(n) * per:
                holder["num_replicas"] = serve_count(n) * per
                serve_changed = True

    groups = copy.deepcopy((spec.get("rayClusterConfig") or {}).get("workerGroupSpecs") or [])
    groups_changed = False
    for pool, n in replicas.items():
        g = _group_for(groups, pool)
        if g is None:
            continue  # a pool without its own group (e.g. local CPU) scales in Serve only
        workers = max(int(n) * int(wpr.get(pool, 1)), int((group_floor or {}).get(g.get("groupName"), 0)))
        want = {
            "replicas": workers,
            "minReplicas": workers,
            "maxReplicas": max(int(g.get("maxReplicas", workers)), workers),
        }
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

    For a data-parallel vLLM app this is DP groups (the override's Serve replicas / data_parallel_size), the
    unit the autoscaler sizes; a vLLM app without the override reports its LLMConfig's count.
    """
    spec = rayservice.get("spec") or {}
    raw = spec.get("serveConfigV2") or ""
    config = yaml.safe_load(raw) if isinstance(raw, str) else copy.deepcopy(raw)
    groups = (spec.get("rayClusterConfig") or {}).get("workerGroupSpecs") or []
    out = {}
    for pool, holders in _replica_holders(config or {}, strict=False).items():
        holder, per = holders[0]
        n = holder.get("num_replicas", 1)
        out[pool] = int(n) // per if isinstance(n, int) else 0
        g = _group_for(groups, pool)
        if g is not None and g.get("replicas") == 0:
            out[pool] = 0  # at zero: Serve keeps one unplaceable replica (serve_count), the group has no pods
    return out


def _llm_configs(app: Mapping[str, Any]) -> list[dict]:
    """The inline LLMConfig dicts of a Ray Serve LLM app.

    build_openai_app takes llm_configs, build_dp_openai_app llm_config.
    """
    if not str(app.get("import_path", "")).startswith("ray.serve.llm:"):
        return []
    args = app.get("args") or {}
    if isinstance(args.get("llm_config"), dict):
        return [args["llm_config"]]
    return [c for c in args.get("llm_configs") or [] if isinstance(c, dict)]   # a str is a file path: not ours


def _llm_pool(cfg: Mapping[str, Any]) -> str | None:
    """The pool an LLMConfig runs on: its bundles request ``pool-<pool>`` (render/serve.py llm_config)."""
    bundle = (cfg.get("placement_group_config") or {}).get("bundle_per_worker") or {}
    pools = [p for p in map(resource_pool, bundle) if p is not None]
    return pools[0] if len(pools) == 1 else None


def _replica_holders(config: Mapping[str, Any], strict: bool = True) -> dict[str, list[tuple[dict, int]]]:
    """Per pool, (dict whose ``num_replicas`` is the pool's Serve count, Serve replicas per pool replica).

    The dicts live inside ``config`` and are changed in place. A vLLM app without an override for its LLM server
    deployment gets one appended, holding the LLMConfig's count (the caller writes ``config`` only if a count
    then changes). strict: raise UserError for an LLMConfig the autoscaler must not size.
    """
    out: dict[str, list[tuple[dict, int]]] = {}
    for app in config.get("applications") or []:
        for dep in app.get("deployments") or []:
            name = str(dep.get("name", ""))
            if name.startswith("engine-"):
                out.setdefault(name[len("engine-"):], []).append((dep, 1))
        import_path = str(app.get("import_path", ""))
        for cfg in _llm_configs(app):
            pool = _llm_pool(cfg)
            if pool is None:
                continue
            dc = cfg.get("deployment_config") if isinstance(cfg.get("deployment_config"), dict) else {}
            if strict and "autoscaling_config" in dc:
                raise UserError(f"application {app.get('name')}: the LLMConfig of pool {pool} sets "
                                "deployment_config.autoscaling_config; Ray Serve's autoscaler and ours would fight "
                                "over its replicas: remove it (the operator renders num_replicas)")
            start = dc.get("num_replicas")
            if strict and not isinstance(start, int):
                raise UserError(f"application {app.get('name')}: the LLMConfig of pool {pool} has no integer "
                                f"deployment_config.num_replicas ({start!r}); Ray Serve LLM would then run its own "
                                "autoscaler on the pool: re-render the RayService from the MoEDeployment")
            name = llm_deployment_name(import_path, cfg)
            if name is None:
                continue   # an LLM builder whose deployment names we do not know: not ours to size
            per = serve_replicas_per_replica(import_path, cfg)
            deployments = app.get("deployments")
            if not isinstance(deployments, list):
                deployments = app["deployments"] = []
            dep = next((d for d in deployments if isinstance(d, dict) and d.get("name") == name), None)
            if dep is None:   # rendered before the override existed: the LLMConfig's count is the live one
                dep = {"name": name, "num_replicas": (start if isinstance(start, int) else 1) * per}
                deployments.append(dep)
            out.setdefault(pool, []).append((dep, per))
    return out


def raycluster_grow(rc: dict, replicas: Mapping[str, int]) -> bool:
    """Raise the RayCluster's worker groups to ``replicas`` (per group name) in place; True when it changed.

    Never lowers a group: the excess of a scale-down goes through ``raycluster_remove`` once Serve has drained it, so
    a scale-up that follows a scale-down first reuses the pods still there. min/max are kept around the count."""
    changed = False
    for g in (rc.get("spec") or {}).get("workerGroupSpecs") or []:
        n = replicas.get(g.get("groupName"))
        if n is None:
            continue
        if int(n) > int(g.get("replicas") or 0) and (g.get("scaleStrategy") or {}).get("workersToDelete"):
            g["scaleStrategy"]["workersToDelete"] = []   # names of an earlier removal: never for a new pod
            changed = True
        n = max(int(n), int(g.get("replicas") or 0))
        want = {"replicas": n, "minReplicas": min(int(g.get("minReplicas", n)), n),
                "maxReplicas": max(int(g.get("maxReplicas", n)), n)}
        for k, v in want.items():
            if g.get(k) != v:
                g[k] = v
                changed = True
    return changed


def record_group_size(rayservice: dict, group: str, replicas: int) -> bool:
    """Lower the RayService's record of worker group ``group`` to ``replicas`` (in place; True when it changed)
    once the running cluster's group was lowered: KubeRay copies the record onto the cluster when it updates it in
    place (a worker group appended, its own version annotation changed), so a record below the cluster would make
    KubeRay delete pods at random, and one above it would bring drained pods back."""
    groups = ((rayservice.get("spec") or {}).get("rayClusterConfig") or {}).get("workerGroupSpecs") or []
    for g in groups:
        if g.get("groupName") == group and int(g.get("replicas") or 0) > int(replicas):
            g["replicas"] = int(replicas)
            g["minReplicas"] = min(int(g.get("minReplicas", replicas)), int(replicas))
            return True
    return False


def raycluster_remove(rc: dict, group: str, replicas: int, pods: tuple[str, ...] | list[str]) -> bool:
    """Lower worker group ``group`` to ``replicas`` and name ``pods`` in ``scaleStrategy.workersToDelete`` (in place;
    True when it changed). KubeRay v1.5.0 deletes the named pods, then compares the count: no random deletion. The
    list stays in the spec (KubeRay does not clear it); the names are of deleted pods, so a later look ignores
    them, and the next removal replaces them."""
    for g in (rc.get("spec") or {}).get("workerGroupSpecs") or []:
        if g.get("groupName") != group:
            continue
        before = copy.deepcopy(g)
        g["replicas"] = int(replicas)
        g["minReplicas"] = min(int(g.get("minReplicas", replicas)), int(replicas))
        if pods:
            g.setdefault("scaleStrategy", {})["workersToDelete"] = list(pods)
        return g != before
    return False


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


def serve_apps(rayservice: Mapping[str, Any]) -> tuple[str, ...]:
    """Application names of the RayService's serveConfigV2 (Serve must report each before its view is trusted:
    scale_down.ray_view); () for a config that cannot be read."""
    raw = (rayservice.get("spec") or {}).get("serveConfigV2") or ""
    try:
        config = yaml.safe_load(raw) if isinstance(raw, str) else raw
        return tuple(str(a["name"]) for a in (config or {}).get("applications") or [] if a.get("name"))
    except Exception:  # noqa: BLE001 - a hand-edited config: no names to insist on
        return ()


def drain_bound_s(rayservice: Mapping[str, Any], pool: str, default: int) -> int:
    """The longest ``graceful_shutdown_timeout_s`` the pool's Serve deployments were rendered with (how long Serve
    lets a stopping replica finish), else ``default``."""
    raw = (rayservice.get("spec") or {}).get("serveConfigV2") or ""
    try:
        config = yaml.safe_load(raw) if isinstance(raw, str) else copy.deepcopy(raw)
        holders = _replica_holders(config or {}, strict=False).get(pool) or []
    except Exception:  # noqa: BLE001 - a hand-edited config: the default bound
        return default
    found = [h.get("graceful_shutdown_timeout_s") for h, _ in holders]
    found = [int(v) for v in found if isinstance(v, (int, float)) and v >= 0]
    return max(found) if found else default
