"""Offline parts of the operator's autoscaler: /metrics names (contracts section 6), RayCluster patch, merge patch,
peering priority; and that the cli parses --peering."""
from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import generate_latest

from moe_operator.autoscaling.model import PoolModel, Settings
from moe_operator.autoscaling.policy import decide
from moe_operator.handlers import autoscale, leader, metrics
from moe_operator.operator_main import build_parser

CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def contract_metric_names() -> set[str]:
    text = CONTRACTS.read_text()
    section = text[text.index("## 6."):]
    end = section.find("\n## ", 5)
    section = section if end < 0 else section[:end]
    return set(re.findall(r"^\| `(moe_operator_[a-z_]+)`", section, re.M))


def test_every_contract_metric_is_exported_after_one_decision():
    names = contract_metric_names()
    assert len(names) >= 9, names
    pool = PoolModel(name="cpu", price_per_hour=0.05, capacity=100.0, min_replicas=1, max_replicas=3)
    d = decide(None, [pool], Settings(max_hourly_cost=1.0), None, 1000.0)   # held: metrics missing
    metrics.record_autoscale("ns", "m", d, 1.0)
    metrics.READY.labels("ns", "m", "cpu").set(1)
    metrics.DECISIONS.labels("ns", "m", "scale").inc()
    metrics.ERRORS.labels("ns", "m").inc()
    metrics.COST_PER_M.labels("ns", "m").set(0.1)
    text = generate_latest().decode()
    exported = set(re.findall(r"^(moe_operator_[a-z_]+)[{ ]", text, re.M))
    assert names <= exported, names - exported
    assert 'moe_operator_metrics_stale{name="m",namespace="ns"} 1.0' in text
    assert 'moe_operator_budget_headroom_dollars_per_hour{name="m",namespace="ns"} 0.95' in text


def test_raycluster_patch_sets_only_the_pools_groups():
    rc = {"spec": {"workerGroupSpecs": [{"groupName": "cpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 2},
                                        {"groupName": "gpu", "replicas": 4, "minReplicas": 0, "maxReplicas": 4}]}}
    assert autoscale.cluster_patch(rc, {"cpu": 3})
    assert rc["spec"]["workerGroupSpecs"][0] == {"groupName": "cpu", "replicas": 3, "minReplicas": 1, "maxReplicas": 3}
    assert rc["spec"]["workerGroupSpecs"][1]["replicas"] == 4
    assert not autoscale.cluster_patch(rc, {"cpu": 3})       # no change: no write


def test_merge_patch_replaces_lists_and_deletes_nulls():
    target = {"spec": {"a": 1, "groups": [{"x": 1}, {"y": 2}], "keep": {"k": 1}}}
    autoscale.merge(target, {"spec": {"a": None, "groups": [{"x": 2}], "keep": {"n": 2}}})
    assert target == {"spec": {"groups": [{"x": 2}], "keep": {"k": 1, "n": 2}}}


def test_peering_priority_is_stable_and_differs_per_pod(monkeypatch):
    monkeypatch.setenv("POD_NAME", "moe-operator-abc")
    a = leader.own_priority()
    assert a == leader.own_priority() and a >= 1
    monkeypatch.setenv("POD_NAME", "moe-operator-def")
    assert leader.own_priority() != a
    assert leader.own_identity() == "moe-operator-def"


def test_peering_flag_parses():
    args = build_parser().parse_args(["--namespace", "a", "--peering", "moe-operator"])
    assert args.peering == "moe-operator" and args.metrics_port == 8080
