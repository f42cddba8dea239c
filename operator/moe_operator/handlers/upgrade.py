"""Budget-aware upgrades: does writing the rendered RayService start a second Ray cluster, and may it?

KubeRay (v1.5.0, ``rayservice_controller.go`` ``shouldPrepareNewCluster``) prepares a new RayCluster when
``spec.rayClusterConfig`` differs from the active cluster's beyond the worker groups' ``replicas``,
``minReplicas``, ``maxReplicas`` and ``scaleStrategy.workersToDelete``, unless the only difference is worker
groups appended at the end (those it adds in place). With ``upgradeStrategy: NewCluster`` the old cluster serves
until the new one is ready, so for the length of the upgrade the fleet runs twice: every pool at its live
replicas plus every pool at the new spec's.

A change that only touches ``serveConfigV2`` or the sizes rolls in place. A change that needs a second cluster goes
ahead only when the surge fits ``maxHourlyCost``; otherwise the reconcile writes nothing and says what the upgrade
would cost (Progressing=False, reason ``UpgradeBlockedByBudget``). The Ray head (CPU only) is not counted. Pure:
dicts in, a verdict out.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

from .drift import SIZE_FIELDS, contains, live_replicas, repair

REASON = "UpgradeBlockedByBudget"


@dataclass(frozen=True)
class Pool:
    """What the surge check needs of one pool: $ per replica-hour and the most replicas it may hold."""

    name: str
    price_per_replica_hour: float
    max_replicas: int


def _muted(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """``rayClusterConfig`` without what KubeRay leaves out of its cluster hash."""
    out = copy.deepcopy(dict(cfg or {}))
    for g in out.get("workerGroupSpecs") or []:
        for k in SIZE_FIELDS:
            g.pop(k, None)
        strategy = g.get("scaleStrategy")
        if isinstance(strategy, dict):
            strategy.pop("workersToDelete", None)
            if not strategy:
                g.pop("scaleStrategy")
    return out


def needs_new_cluster(live_spec: Mapping[str, Any], desired_spec: Mapping[str, Any]) -> bool:
    """True when writing ``desired_spec`` over ``live_spec`` (RayService specs) makes KubeRay prepare a new cluster.

    The live object carries the API server's defaults, so "unchanged" is "every rendered value present and equal"
    (drift.contains), as for drift."""
    live, want = _muted(live_spec.get("rayClusterConfig")), _muted(desired_spec.get("rayClusterConfig"))
    if contains(live, want):
        return False
    have = live.get("workerGroupSpecs") or []
    groups = want.get("workerGroupSpecs") or []
    if len(groups) > len(have):          # groups appended at the end, the rest unchanged: KubeRay updates in place
        prefix = dict(want, workerGroupSpecs=groups[:len(have)])
        return not contains(live, prefix)
    return True


def serving(live: Mapping[str, Any]) -> bool:
    """True when KubeRay reports an active cluster for the RayService (``status.activeServiceStatus.rayClusterName``):
    only then does an old cluster keep running beside the new one. A first cluster that never came up (a bad image)
    is replaced, not doubled, so fixing it is never held."""
    active = ((live.get("status") or {}).get("activeServiceStatus") or {}).get("rayClusterName")
    return bool(active)


def blocked(live_spec: Mapping[str, Any], desired_spec: Mapping[str, Any], pools: list[Pool],
            max_hourly_cost: float | None, old_serves: bool = True) -> str | None:
    """None when the write may go ahead; else the sentence for the status: what the upgrade would run and cost, and
    what would let it proceed. Only ``maxHourlyCost`` holds a change: ``maxReplicas`` bounds what the autoscaler
    asks for, not the accelerators a cluster has (with minReplicas = maxReplicas no surge would ever fit it).
    A live worker group of a pool the new spec no longer has is priced at the dearest known pool (its own price is
    not in the new spec): the surge is over-, never under-estimated."""
    if max_hourly_cost is None or not needs_new_cluster(live_spec, desired_spec):
        return None
    old, new = live_replicas({"spec": live_spec}), live_replicas({"spec": desired_spec})
    price = {p.name: p.price_per_replica_hour for p in pools}
    dearest = max(price.values(), default=0.0)
    old_cost = sum(price.get(k, dearest) * n for k, n in old.items()) if old_serves else 0.0
    new_cost = sum(price.get(k, dearest) * n for k, n in new.items())
    if old_cost + new_cost <= max_hourly_cost + 1e-9:
        return None
    cost = (f"both clusters cost ${old_cost + new_cost:.2f}/h (the serving one ${old_cost:.2f}/h + the new one "
            f"${new_cost:.2f}/h)" if old_serves else
            f"the new cluster costs ${new_cost:.2f}/h (no cluster serves yet, so none runs beside it)")
    return (f"this change needs a new Ray cluster (KubeRay NewCluster upgrade: the old one serves until the new one is "
            f"ready) and {cost} > maxHourlyCost ${max_hourly_cost:g}/h. Nothing was applied; raise maxHourlyCost "
            f"to at least ${old_cost + new_cost:.2f}, lower the pools' replicas, or revert the change")


def write_blocked(live: Mapping[str, Any], desired: Mapping[str, Any], strict: bool, pools: list[Pool],
                  max_hourly_cost: float | None) -> str | None:
    """``blocked`` for the write the reconcile would make: the drift repair of ``live`` towards ``desired`` (RayService
    objects). A sweep (``strict`` False) keeps the live sizes and SPEC_CHANGE_ONLY fields, so what it leaves alone never
    counts as an upgrade; nothing to write, nothing to block."""
    after = copy.deepcopy(dict(live))
    if not repair(after, dict(desired), strict):
        return None
    return blocked(live.get("spec") or {}, after.get("spec") or {}, pools, max_hourly_cost, serving(live))
