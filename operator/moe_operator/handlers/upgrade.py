"""Budget-aware upgrades: does writing the rendered RayService start a second Ray cluster, and may it?

KubeRay (v1.5.0, ``rayservice_controller.go`` ``shouldPrepareNewCluster``) prepares a new RayCluster when
``spec.rayClusterConfig`` differs from the active cluster's beyond the worker groups' ``replicas``,
``minReplicas``, ``maxReplicas`` and ``scaleStrategy.workersToDelete``, unless the only difference is worker
groups appended at the end (those it adds in place). With ``upgradeStrategy: NewCluster`` the old cluster serves
until the new one is ready, so for the length of the upgrade the fleet runs twice: every pool at its live
replicas plus every pool at the new spec's.

A change that only touches ``serveConfigV2`` or the sizes rolls in place. A change that needs a second cluster goes
ahead only when the surge fits ``maxHourlyCost`` and each pool's ``maxReplicas`` (the accelerators the
deployment may hold); otherwise the reconcile writes nothing and says what the upgrade would cost (Progressing=False,
reason ``UpgradeBlockedByBudget``). The Ray head (CPU only) is not counted. Pure: dicts in, a verdict out.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Mapping

from .drift import SIZE_FIELDS, contains, repair

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


def _replicas(spec: Mapping[str, Any]) -> dict[str, int]:
    groups = (spec.get("rayClusterConfig") or {}).get("workerGroupSpecs") or []
    return {g["groupName"]: int(g.get("replicas") or 0) for g in groups if "groupName" in g}


def blocked(live_spec: Mapping[str, Any], desired_spec: Mapping[str, Any], pools: list[Pool],
            max_hourly_cost: float | None) -> str | None:
    """None when the write may go ahead; else the sentence for the status: what the upgrade would run and cost, and
    what would let it proceed."""
    if not needs_new_cluster(live_spec, desired_spec):
        return None
    old, new = _replicas(live_spec), _replicas(desired_spec)
    price = {p.name: p.price_per_replica_hour for p in pools}
    old_cost = sum(price.get(k, 0.0) * n for k, n in old.items())
    new_cost = sum(price.get(k, 0.0) * n for k, n in new.items())
    problems = []
    if max_hourly_cost is not None and old_cost + new_cost > max_hourly_cost + 1e-9:
        problems.append(f"both clusters cost ${old_cost + new_cost:.2f}/h (the serving one ${old_cost:.2f}/h + the new "
                        f"one ${new_cost:.2f}/h) > maxHourlyCost ${max_hourly_cost:g}/h")
    for p in pools:
        surge = old.get(p.name, 0) + new.get(p.name, 0)
        if surge > p.max_replicas:
            problems.append(f"pool {p.name} would hold {surge} replicas ({old.get(p.name, 0)} serving + "
                            f"{new.get(p.name, 0)} new) > maxReplicas {p.max_replicas}")
    if not problems:
        return None
    return ("this change needs a new Ray cluster (KubeRay NewCluster upgrade: the old one serves until the new one is "
            "ready) and the surge does not fit: " + "; ".join(problems) + ". Nothing was applied; raise the limit, "
            "lower the pools' replicas for the upgrade, or revert the change")


def write_blocked(live: Mapping[str, Any], desired: Mapping[str, Any], strict: bool, pools: list[Pool],
                  max_hourly_cost: float | None) -> str | None:
    """``blocked`` for the write the reconcile would make: the drift repair of ``live`` towards ``desired`` (RayService
    objects). A sweep (``strict`` False) keeps the live sizes and SPEC_CHANGE_ONLY fields, so what it leaves alone never
    counts as an upgrade; nothing to write, nothing to block."""
    after = copy.deepcopy(dict(live))
    if not repair(after, dict(desired), strict):
        return None
    return blocked(live.get("spec") or {}, after.get("spec") or {}, pools, max_hourly_cost)
