"""Status of a MoEDeployment from the reconcile outcome: conditions, per-pool replicas, placement summary.

Conditions keep their lastTransitionTime while their status is unchanged, so an unchanged outcome gives an
identical status and the handler can skip the write.
"""
from __future__ import annotations

import time
from typing import Any, Iterable, Mapping

from moe_operator.api.status import Condition
from moe_operator.api.times import rfc3339
from moe_operator.render.inputs import RenderInput

# the schema's bound on a condition message (api/status.py owns it); a longer one fails the whole status patch
MESSAGE_MAX = next(m.max_length for m in Condition.model_fields["message"].metadata if hasattr(m, "max_length"))
CUT = " ... (cut)"


def bounded(message: str, limit: int = MESSAGE_MAX) -> str:
    """``message`` cut to ``limit`` characters, saying so: a message quoting a huge value must still be written."""
    return message if len(message) <= limit else message[:limit - len(CUT)] + CUT


def now() -> str:
    """The current time as status fields write it (RFC 3339, UTC, whole seconds)."""
    return rfc3339(time.time())


def condition(old: Iterable[dict], type_: str, status: str, reason: str, message: str, generation: int | None) -> dict:
    prev = next((c for c in old or [] if c.get("type") == type_), None)
    same = prev is not None and prev.get("status") == status
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": bounded(message),
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
            # the reason only: KubeRay rewrites its messages often, and our status must not change with them
            return c.get(
                "status"
            ) == "True", f"KubeRay reports Ready={c.get('status')} ({c.get('reason') or 'no reason'})"
    state = st.get("serviceStatus") or ""
    return state == "Running", f"RayService serviceStatus is {state or 'not reported yet'}"


READY_REASONS = ("RayServiceReady", "WaitingForRayService")          # the Ready reasons ok_status writes
PROGRESS_REASONS = ("Reconciled", "RayServiceStarting")              # its Progressing reasons when nothing is held


def serving(live: dict | None, desired: Mapping[str, int], counted: Mapping[str, int] | None) -> tuple[bool, str]:
    """(ready, why): KubeRay reports the RayService Ready and, where the pods were counted (``counted`` not None),
    every pool with ``desired`` replicas has a ready one."""
    ready, why = rayservice_ready(live)
    idle = [n for n, d in desired.items() if d > 0 and counted.get(n, 0) == 0] if counted is not None else []
    if ready and idle:
        ready, why = False, f"pool(s) {', '.join(idle)} have no replica whose pods are all Ready"
    return ready, why


def _serving_conditions(conds: list[dict], ready: bool, why: str, name: str, generation: int | None,
                        blocked: tuple[str, str] | None) -> list[dict]:
    """The Ready and Progressing conditions of a deployment whose RayService ``name`` is applied."""
    return [
        condition(conds, "Ready", "True" if ready else "False", READY_REASONS[0] if ready else READY_REASONS[1],
                  "the RayService serves the model" if ready
                  else f"waiting for KubeRay to bring up RayService {name}: {why}", generation),
        condition(conds, "Progressing", "False", *blocked, generation) if blocked else condition(
            conds, "Progressing", "False" if ready else "True", PROGRESS_REASONS[0] if ready else PROGRESS_REASONS[1],
            "nothing to do" if ready else f"RayService {name} is applied; pods and Serve apps are starting",
            generation),
    ]


def with_readiness(old: dict, live: dict | None, counted: Mapping[str, int]) -> dict[str, Any] | None:
    """``old`` (a status ok_status wrote) with the ready replicas ``counted`` from the pods: pools[].readyReplicas,
    ``replicas``, ``ready`` and the Ready/Progressing conditions as ok_status would set them, nothing else (no plan,
    no render: the pod watch's refresh, handlers/podwatch.py). None when ``old`` is not such a status (spec invalid,
    RayService not owned, nothing written yet): only a full reconcile may say anything there."""
    conds = old.get("conditions") or []
    by_type = {c.get("type"): c for c in conds}
    ready_c, progress_c = by_type.get("Ready"), by_type.get("Progressing") or {}
    if not old.get("pools") or ready_c is None or ready_c.get("reason") not in READY_REASONS:
        return None
    pools = [{**p, "readyReplicas": int(counted.get(p.get("name"), 0))} for p in old["pools"]]
    ready, why = serving(live, {p.get("name"): int(p.get("desiredReplicas") or 0) for p in pools}, counted)
    held = progress_c.get("reason")
    blocked = (held, progress_c.get("message") or "") if held and held not in PROGRESS_REASONS else None
    generation = ready_c.get("observedGeneration", old.get("observedGeneration"))
    name = old.get("rayServiceName") or ""
    fresh = {c["type"]: c for c in _serving_conditions(conds, ready, why, name, generation, blocked)}
    return {
        **old,
        "pools": pools,
        "replicas": " ".join(f"{p.get('name')}={p['readyReplicas']}/{p.get('desiredReplicas', 0)}" for p in pools),
        "ready": "True" if ready else "False",
        "conditions": [fresh.get(c.get("type"), c) for c in conds],
    }


def _plan_pool(plan: Any, name: str) -> Any:
    for p in getattr(plan, "pools", None) or []:
        if p.name == name:
            return p
    return None


def ok_status(old: dict, generation: int | None, r: RenderInput, plan: Any, live: dict | None,
              counted: dict[str, int] | None = None, blocked: tuple[str, str] | None = None,
              waiting_on: str | None = None) -> dict[str, Any]:
    """Status after a successful reconcile (the RayService exists and carries our fields).

    ``counted``: ready replicas per pool from the worker pods (handlers/readiness.py); None when unknown, and then a
    pool counts as all ready only while KubeRay reports the RayService Ready. Ready=True needs every pool that
    should serve to have a ready replica. ``blocked``: (reason, message) of a spec change held back (upgrade.py):
    Progressing is False with it, whatever the serving cluster's state. ``waiting_on``: a cause known to the
    operator (a cache claim not Bound) that the Ready message names first while the deployment is not ready."""
    ready, why = serving(live, {p.name: p.replicas for p in r.pools}, counted)
    if not ready and waiting_on:
        why = f"{waiting_on}; {why}"
    conds = old.get("conditions") or []
    pools = []
    for p in r.pools:
        pp = _plan_pool(plan, p.name)
        pools.append({
            "name": p.name,
            "accelerator": p.accelerator,
            "desiredReplicas": p.replicas,
            "readyReplicas": counted.get(p.name, 0) if counted is not None else (p.replicas if ready else 0),
            "costPerHour": round(pp.cost.price_per_replica_hour * p.replicas, 4) if pp else 0.0,
            "capacityTokensPerSecond": round(pp.capacity.weighted_tps, 2) if pp else 0.0,
        })
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "rayServiceName": r.name,
        "pools": pools,
        "replicas": " ".join(f"{p['name']}={p['readyReplicas']}/{p['desiredReplicas']}" for p in pools),
        "ready": "True" if ready else "False",
        "costPerHour": round(sum(p["costPerHour"] for p in pools), 4),
        "conditions": [
            *_serving_conditions(conds, ready, why, r.name, generation, blocked),
            condition(conds, "Degraded", "False", "AsPlanned", "", generation),
            condition(conds, "SpecInvalid", "False", "SpecValid", "", generation),
            # the autoscaler owns BudgetLimited (handlers/autoscale.py): carried over unchanged
            *[c for c in conds if c.get("type") == "BudgetLimited"],
        ],
    }
    first = plan.pools[0].placement_summary if plan is not None and plan.pools else None
    if first is not None:
        status["placement"] = {"shards": first.shards, "expertsPerShard": first.experts_per_shard,
                               "redundantSlots": first.redundant_slots}
    return status


def invalid_status(old: dict, generation: int | None, reason: str, message: str,
                   spec_invalid: bool = True) -> dict[str, Any]:
    """Nothing applied for this generation: the spec is invalid, or (``spec_invalid`` False) the cluster refuses it."""
    conds = old.get("conditions") or []
    fix = "fix the spec" if spec_invalid else "see Ready"
    return {
        "observedGeneration": generation,
        "ready": "False",
        "conditions": [
            condition(conds, "Ready", "False", reason, message, generation),
            condition(
                conds, "Progressing", "False", reason, f"{fix}; nothing was applied for this generation", generation
            ),
            condition(conds, "Degraded", "False", "AsPlanned", "", generation),
            condition(
                conds,
                "SpecInvalid",
                "True" if spec_invalid else "False",
                reason if spec_invalid else "SpecValid",
                message if spec_invalid else "",
                generation,
            ),
        ],
    }


def changed(old: dict, new: dict) -> dict[str, Any]:
    """The keys of ``new`` whose values differ from ``old`` (the status merge patch to send; {} = no write)."""
    return {k: v for k, v in new.items() if old.get(k) != v}
