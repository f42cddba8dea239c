"""Planning: pure functions from a spec, a model config and the catalog to fit, parallelism, placement, capacity, cost.

Modules: ``model`` (facts from config.json), ``fit`` (memory), ``parallelism`` (TP/DP/EP), ``placement`` (expert
balancer), ``static`` (the first placement of a pool), ``capacity`` (roofline tokens/s), ``cost`` ($/hour, $/1M tokens),
``plan`` (all of it for a MoEDeployment). No kopf, kubernetes, ray or torch here, and no I/O.
"""
from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy: `from moe_operator.planning import plan_deployment` without importing every module at package import.
    if name in {"plan_deployment", "DeploymentPlan", "PoolPlan", "pool_capacity"}:
        from moe_operator.planning import plan

        return getattr(plan, name)
    if name in {"replica_capacity", "PoolCapacity"}:
        from moe_operator.planning import capacity

        return getattr(capacity, name)
    raise AttributeError(name)
