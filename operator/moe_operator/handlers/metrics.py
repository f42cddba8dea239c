"""Operator metrics (docs/contracts.md section 6) on /metrics; the reconcile path updates them."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, start_http_server

DESIRED = Gauge("moe_operator_desired_replicas", "Replicas the operator asks for", ["namespace", "name", "pool"])
READY = Gauge("moe_operator_ready_replicas", "Replicas ready in the RayCluster", ["namespace", "name", "pool"])
COST = Gauge("moe_operator_cost_per_hour_dollars", "US$/hour of the desired fleet", ["namespace", "name"])
WRITES = Counter("moe_operator_api_writes_total", "API writes the operator made, by kind (create, replace, status, event)",
                 ["kind"])
ERRORS = Counter("moe_operator_reconcile_errors_total", "Failed reconciles", ["namespace", "name"])


def record(namespace: str, name: str, status: dict) -> None:
    for p in status.get("pools") or []:
        DESIRED.labels(namespace, name, p["name"]).set(p.get("desiredReplicas", 0))
        READY.labels(namespace, name, p["name"]).set(p.get("readyReplicas", 0))
    if status.get("costPerHour") is not None:
        COST.labels(namespace, name).set(status["costPerHour"])


def serve_metrics(port: int) -> None:
    start_http_server(port)
