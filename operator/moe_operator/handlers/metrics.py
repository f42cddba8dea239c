"""Operator metrics (docs/contracts.md section 6) on /metrics; the reconcile path and the autoscaler update them."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, start_http_server

_L = ["namespace", "name"]
DESIRED = Gauge("moe_operator_desired_replicas", "Replicas the autoscaler wants", [*_L, "pool"])
READY = Gauge("moe_operator_ready_replicas", "Replicas ready in the RayCluster", [*_L, "pool"])
COST = Gauge("moe_operator_cost_per_hour_dollars", "US$/hour of the desired fleet", _L)
COST_PER_M = Gauge("moe_operator_cost_per_million_tokens_dollars", "US$ per 1M tokens at observed demand", _L)
HEADROOM = Gauge("moe_operator_budget_headroom_dollars_per_hour",
                 "maxHourlyCost minus cost per hour, US$/hour (absent without a budget)", _L)
LIMITED = Gauge("moe_operator_budget_limited", "1 while BudgetLimited=True", _L)
STALE = Gauge("moe_operator_metrics_stale", "1 while the autoscaler holds for stale/missing metrics", _L)
DECISIONS = Counter("moe_operator_scaling_decisions", "Decisions that changed replicas, by reason word",
                    [*_L, "reason"])   # exported as moe_operator_scaling_decisions_total
WRITES = Counter(
    "moe_operator_api_writes_total", "API writes the operator made, by kind (create, replace, status, event)", ["kind"]
)
ERRORS = Counter("moe_operator_reconcile_errors", "Failed reconciles", _L)   # ..._total
REBALANCES = Counter("moe_operator_rebalances", "Expert placements the rebalancer posted to the runtime",
                     [*_L, "pool"])   # ..._total
IMBALANCE = Gauge("moe_operator_expert_imbalance",
                  "MoE step time over the ideal step under the last window's loads (1.0 = even), for the placement "
                  "the pool runs or, after a move, the one posted", [*_L, "pool"])


PER_DEPLOYMENT = (DESIRED, READY, COST, COST_PER_M, HEADROOM, LIMITED, STALE, DECISIONS, ERRORS, REBALANCES, IMBALANCE)


def forget(namespace: str, name: str) -> None:
    """Remove every series of MoEDeployment ``namespace/name`` (it was deleted): a stale gauge keeps alerts firing."""
    for metric in PER_DEPLOYMENT:
        labelnames = metric._labelnames          # noqa: SLF001 - prometheus_client has no public label-set listing
        keys = {tuple(s.labels[k] for k in labelnames) for fam in metric.collect() for s in fam.samples
                if s.labels.get("namespace") == namespace and s.labels.get("name") == name}
        for key in keys:
            try:
                metric.remove(*key)
            except KeyError:
                pass


def record(namespace: str, name: str, status: dict) -> None:
    for p in status.get("pools") or []:
        DESIRED.labels(namespace, name, p["name"]).set(p.get("desiredReplicas", 0))
        READY.labels(namespace, name, p["name"]).set(p.get("readyReplicas", 0))
    if status.get("costPerHour") is not None:
        COST.labels(namespace, name).set(status["costPerHour"])


def record_autoscale(namespace: str, name: str, decision, max_hourly_cost: float | None) -> None:
    """Gauges from one autoscaler decision (policy.Decision); US$ figures."""
    for pool, n in decision.replicas.items():
        DESIRED.labels(namespace, name, pool).set(n)
    COST.labels(namespace, name).set(decision.cost_per_hour)
    if decision.cost_per_million is not None:
        COST_PER_M.labels(namespace, name).set(decision.cost_per_million)
    if max_hourly_cost is not None:
        HEADROOM.labels(namespace, name).set(max_hourly_cost - decision.cost_per_hour)
    else:
        try:
            HEADROOM.remove(namespace, name)
        except KeyError:
            pass
    LIMITED.labels(namespace, name).set(
        1 if any(c.type == "BudgetLimited" and c.status == "True" for c in decision.conditions) else 0)
    STALE.labels(namespace, name).set(1 if decision.held else 0)


def record_rebalance(namespace: str, name: str, pool: str, decision, posted: bool) -> None:
    """Gauge and counter from one rebalancer look at a pool (planning.rebalance.RebalanceDecision)."""
    IMBALANCE.labels(namespace, name, pool).set(decision.imbalance_after if posted else decision.imbalance_before)
    if posted:
        REBALANCES.labels(namespace, name, pool).inc()


def serve_metrics(port: int) -> None:
    start_http_server(port)
