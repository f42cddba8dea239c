"""Alerts and dashboard: valid for their tools, and every query selects only metrics the project exports.

Metric names come from docs/contracts.md sections 4 (runtime) and 6 (operator), parsed at test time.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from chart_tools import CHART, contract_metrics, grouping_labels, metric_selectors, series_names
from require import need

RULES = CHART / "files" / "prometheus-rules.yaml"
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
#: Labels the contract puts on series (sections 4 and 6) plus the histogram bucket label.
CONTRACT_LABELS = {"model", "pool", "kind", "outcome", "layer", "expert", "tier",
                   "namespace", "name", "reason", "le"}


def rule_exprs() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r.get("alert") or r["record"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def dashboard_exprs() -> dict[str, str]:
    dash = json.loads(DASHBOARD.read_text())
    out = {}
    for panel in dash["panels"]:
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for t in panel["targets"]:
            out[f"{panel['title']} [{t['refId']}]"] = t["expr"]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            out[f"variable {var['name']}"] = var["query"]["query"]
    return out


def test_contract_lists_the_metrics_this_bundle_relies_on():
    metrics = contract_metrics()
    assert "moe_tokens_total" in metrics and "moe_operator_cost_per_hour_dollars" in metrics
    assert metrics["moe_ttft_seconds"] == "histogram"


def test_metric_selector_parser():
    """The parser the two checks below rely on finds metric names and nothing else."""
    expr = ('histogram_quantile(0.95, sum by (pool, le) (rate(moe_ttft_seconds_bucket{model=~"$model", '
            'kind="generated"}[5m]))) > 2 and up{job="x"} + $ttft_slo')
    assert metric_selectors(expr) == {"moe_ttft_seconds_bucket", "up"}
    assert grouping_labels(expr) == {"pool", "le"}
    assert metric_selectors('label_values(moe_operator_cost_per_hour_dollars{namespace=~"$namespace"}, name)') == {
        "moe_operator_cost_per_hour_dollars"}


def test_promtool_accepts_the_alert_rules():
    promtool = shutil.which("promtool")
    if not promtool:
        need("promtool", "Debian's prometheus package provides /usr/bin/promtool")
    proc = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in proc.stdout


def test_alerts_cover_the_four_situations():
    alerts = set(rule_exprs())
    assert {"MoEBudgetLimited", "MoETTFTSLOViolated", "MoETPOTSLOViolated", "MoEMetricsStale",
            "MoEScalingFlapping"} <= alerts
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"info", "warning", "critical"}, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_query_uses_only_exported_metrics(source):
    exprs = rule_exprs() if source == "alerts" else dashboard_exprs()
    allowed = series_names(contract_metrics())
    problems = []
    for where, expr in exprs.items():
        used = metric_selectors(expr)
        if not used:
            problems.append(f"{where}: selects no metric: {expr}")
        for name in sorted(used - allowed):
            problems.append(f"{where}: {name} is not in docs/contracts.md sections 4/6")
        for label in sorted(grouping_labels(expr) - CONTRACT_LABELS):
            problems.append(f"{where}: groups by {label!r}, a label no exported series carries")
    assert not problems, "\n".join(problems)


def test_dashboard_shows_what_sres_asked_for():
    dash = json.loads(DASHBOARD.read_text())
    exprs = " ".join(dashboard_exprs().values())
    for metric in ("moe_tokens_total", "moe_operator_cost_per_hour_dollars",
                   "moe_operator_cost_per_million_tokens_dollars", "moe_operator_desired_replicas",
                   "moe_operator_ready_replicas", "moe_ttft_seconds_bucket", "moe_tpot_seconds_bucket",
                   "moe_expert_tokens_total"):
        assert metric in exprs, metric
    assert 'kind="cached_prompt"' in exprs  # cache hit ratio
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert dash["uid"] == "moe-operator" and dash["schemaVersion"] >= 36
    # Panels do not overlap on Grafana's 24-column grid.
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another at {(x, y)}"
                cells.add((x, y))
    # Every $variable a query uses is defined.
    defined = {v["name"] for v in dash["templating"]["list"]} | {"__all", "__interval", "__rate_interval"}
    import re
    used = set(re.findall(r"\$([a-zA-Z_][a-zA-Z0-9_]*)", exprs))
    assert used <= defined, used - defined
