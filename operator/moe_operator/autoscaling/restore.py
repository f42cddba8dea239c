"""Rebuild the policy's History after an operator restart from what the MoEDeployment's status recorded.

The operator keeps History in memory; a fresh process has none, and an empty History lets the first decision
scale down at once (its scale-down window holds just the current sample). Pure: reads the status dict and the
RayService's Serve replicas, returns a History of the policy's own shape (policy.History).

What is restored:
  * ``desired``: ``status.pools[].desiredReplicas`` for every pool, else the replicas of the newest
    ``status.lastDecisions`` entry, else the RayService's Serve replicas (what is deployed);
  * ``needs``: one sample "the desired capacity was needed" (work units/s, like a metrics hold), dated just
    outside the scale-up window: a restart delays no scale-up, and removes nothing until
    ``scaleDownStabilizationSeconds - scaleUpStabilizationSeconds`` (minus 1 s) of fresh samples say so.
Not restored (not in status): capacity corrections (back to the planner's model, factor 1), the SLO boost and
the idle-since time (scale to zero waits a full idle period again); each errs toward keeping replicas.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from .mix import capacity_of
from .model import PoolModel, Settings
from .policy import History


def restored_desired(status: Mapping[str, Any] | None, pool_names: Sequence[str],
                     deployed: Mapping[str, int]) -> tuple[dict[str, int], str]:
    """(desired replicas per pool, where they came from: "status.pools" | "status.lastDecisions" | "rayservice")."""
    st = status or {}
    by_pool = {p.get("name"): p.get("desiredReplicas") for p in st.get("pools") or [] if isinstance(p, Mapping)}
    if pool_names and all(isinstance(by_pool.get(n), int) for n in pool_names):
        return {n: int(by_pool[n]) for n in pool_names}, "status.pools"
    decisions = [d for d in st.get("lastDecisions") or [] if isinstance(d, Mapping)]
    last = (decisions[-1].get("replicas") if decisions else None) or {}
    if pool_names and all(isinstance(last.get(n), int) for n in pool_names):
        return {n: int(last[n]) for n in pool_names}, "status.lastDecisions"
    return {n: int(deployed.get(n, 0)) for n in pool_names}, "rayservice"


def restore_history(status: Mapping[str, Any] | None, pools: Sequence[PoolModel], settings: Settings,
                    deployed: Mapping[str, int], now: float) -> tuple[History, str]:
    """(History for the first decision of a (re)started operator, where its desired counts came from: see
    ``restored_desired``); ``now`` in Unix seconds."""
    desired, source = restored_desired(status, [p.name for p in pools], deployed)
    seed_at = now - settings.scale_up_stabilization_s - 1.0
    return History(desired=desired, needs=((seed_at, capacity_of(pools, desired)),)), source
