"""Status of a MoEDeployment from the reconcile outcome: conditions, per-pool replicas, placement summary.

Conditions keep their lastTransitionTime while their status is unchanged, so an unchanged outcome gives an
identical status and the handler can skip the write.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Iterable

from moe_operator.render.inputs import RenderInput


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def condition(old: Iterable[dict], type_: str, status: str, reason: str, message: str, generation: int | None) -> dict:
    prev = next((c for c in old or [] if c.get("type") == type_), None)
    same = prev is not None and prev.get("status") == status
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": prev.get("lastTransitionTime") if same and prev.get("lastTransitionTime") else now(),
        "observedGeneration": generation,
    }


def rayservice_ready(live: dict | None) -> tuple[bool, str]:
    """(ready, why) from the KubeRay RayService's own status."""
    if not live:
        return False, "the RayService does not exist yet"
    st = live.get("status") or {}
    for c in st.get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True", c.get("message") or c.get("reason") or ""
    state = st.get("serviceStatus") or ""
    return state == "Running", f"RayService serviceStatus is {state or 'not reported yet'}"


def _get(obj: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(obj, n, None) if obj is not None else None
        if v is not None:
            return v
    return default


def _plan_pool(plan: Any, name: str) -> Any:
    for p in _get(plan, "pools", default=[]) or []:
        if _get(p, "name") == name:
            return p
    return None


def ok_status(old: dict, generation: int | None, r: RenderInput, plan: Any, live: dict | None) -> dict[str, Any]:
    """Status after a successful reconcile (the RayService exists and carries our fields)."""
    ready, why = rayservice_ready(live)
    conds = old.get("conditions") or []
    pools = []
    for p in r.pools:
        pp = _plan_pool(plan, p.name)
        pools.append({
            "name": p.name,
            "accelerator": p.accelerator,
            "desiredReplicas": p.replicas,
            "readyReplicas": p.replicas if ready else 0,
            "costPerHour": round(float(_get(pp, "cost_per_hour", "replica_cost_per_hour", default=0.0)) * p.replicas, 4),
            "capacityTokensPerSecond": round(float(_get(pp, "capacity_tokens_per_second", "tokens_per_second", default=0.0)), 2),
        })
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "rayServiceName": r.name,
        "pools": pools,
        "replicas": " ".join(f"{p['name']}={p['readyReplicas']}/{p['desiredReplicas']}" for p in pools),
        "ready": "True" if ready else "False",
        "costPerHour": round(sum(p["costPerHour"] for p in pools), 4),
        "conditions": [
            condition(conds, "Ready", "True" if ready else "False", "RayServiceReady" if ready else "WaitingForRayService",
                      "the RayService serves the model" if ready else
                      f"waiting for KubeRay to bring up RayService {r.name}: {why}", generation),
            condition(conds, "Progressing", "False" if ready else "True", "Reconciled" if ready else "RayServiceStarting",
                      "nothing to do" if ready else f"RayService {r.name} is applied; pods and Serve apps are starting",
                      generation),
            condition(conds, "Degraded", "False", "AsPlanned", "", generation),
            condition(conds, "SpecInvalid", "False", "SpecValid", "", generation),
        ],
    }
    summary = placement_summary(plan, r)
    if summary:
        status["placement"] = summary
    return status


def placement_summary(plan: Any, r: RenderInput) -> dict[str, Any] | None:
    """Shards, experts per shard and redundant slots of the first pool that has a placement."""
    for p in r.pools:
        pj = p.placement
        if not pj:
            continue
        layer0 = pj["layers"][0]
        counts = sorted(len(s) for s in layer0)
        spread = str(counts[0]) if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"
        return {"shards": len(pj["shards"]), "expertsPerShard": spread,
                "redundantSlots": sum(counts) - pj["numExperts"]}
    return None


def invalid_status(old: dict, generation: int | None, reason: str, message: str) -> dict[str, Any]:
    conds = old.get("conditions") or []
    return {
        "observedGeneration": generation,
        "ready": "False",
        "conditions": [
            condition(conds, "Ready", "False", reason, message, generation),
            condition(conds, "Progressing", "False", reason, "fix the spec; nothing was created for this generation", generation),
            condition(conds, "Degraded", "False", "AsPlanned", "", generation),
            condition(conds, "SpecInvalid", "True", reason, message, generation),
        ],
    }


def changed(old: dict, new: dict) -> dict[str, Any]:
    """The keys of ``new`` whose values differ from ``old`` (the status merge patch to send; {} = no write)."""
    return {k: v for k, v in new.items() if old.get(k) != v}
