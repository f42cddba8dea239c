"""Decision -> the MoEDeployment status fields the autoscaler owns (camelCase, moe_operator.api.status shapes).

Pure: the kopf timer merges the returned dict into status and appends ``last_decision`` to
``status.lastDecisions`` (bounded to 20 there). ``ready`` is what KubeRay reports per worker group.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from moe_operator.api.times import rfc3339

from .model import PoolModel
from .observation import Observation
from .policy import Decision


def status_fields(decision: Decision, pools: Sequence[PoolModel], observation: Observation | None,
                  ready: Mapping[str, int], accelerators: Mapping[str, str], budget_set: bool) -> dict:
    """status.pools, replicas, tokensPerSecond, costPerHour, costPerMillionTokens, budgetState."""
    limited = any(c.type == "BudgetLimited" and c.status == "True" for c in decision.conditions)
    return {
        "pools": [{"name": p.name, "accelerator": accelerators.get(p.name, ""),
                   "desiredReplicas": decision.replicas.get(p.name, 0), "readyReplicas": int(ready.get(p.name, 0)),
                   "costPerHour": round(decision.replicas.get(p.name, 0) * p.price_per_hour, 4),
                   "capacityTokensPerSecond": p.capacity} for p in pools],
        "replicas": " ".join(f"{p.name}={int(ready.get(p.name, 0))}/{decision.replicas.get(p.name, 0)}" for p in pools),
        "tokensPerSecond": None if observation is None or observation.tokens_per_s is None
        else round(observation.total_tokens_per_s, 2),
        "costPerHour": round(decision.cost_per_hour, 4),
        "costPerMillionTokens": None if decision.cost_per_million is None else round(decision.cost_per_million, 5),
        "budgetState": "Limited" if limited else ("Ok" if budget_set else "NoBudget"),
    }


def last_decision(decision: Decision, now: float) -> dict:
    """One status.lastDecisions entry: time, replicas, reason (<= 2048 chars)."""
    return {"time": rfc3339(now), "replicas": dict(decision.replicas), "reason": decision.reason[:2048]}


def changed(previous: Mapping[str, int] | None, decision: Decision) -> bool:
    """True when the decision moves replicas (patch the RayService and emit one Event only then)."""
    return previous is None or dict(previous) != dict(decision.replicas)
