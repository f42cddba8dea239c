"""Issue 14 item 10: the operator-level allow-list of metrics hosts (``--metrics-hosts``, chart ``metricsHosts``).
A MoEDeployment's metrics URL whose host is not allowed is refused with a status reason, and no request is sent;
an empty list allows every host (the behaviour before the list). A real HTTP server on 127.0.0.1 counts requests."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from moe_operator.api import load_manifest
from moe_operator.catalog import Catalog
from moe_operator.handlers import autoscale
from moe_operator.operator_main import build_parser
from moe_operator.render import Images
from moe_operator.render.pipeline import plan_and_render
from slow_http import Server
from test_operator_autoscale_units import _Cluster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mixtral-8x7b-ascend.yaml"


@pytest.fixture
def server():
    s = Server("ok")
    yield s
    s.stop()


def tick_with_metrics(monkeypatch, metrics: dict) -> dict:
    """One autoscaler tick of the example MoEDeployment reading ``metrics``; the status it wrote."""
    m = load_manifest(EXAMPLE)
    cluster = _Cluster(plan_and_render(m.metadata.name, "default", m.spec, Catalog.default(), Images()).rayservice)
    cluster.install(monkeypatch)
    monkeypatch.setattr(autoscale, "STATES", {})
    monkeypatch.delenv("MOE_PROMETHEUS_URL", raising=False)
    body = {"apiVersion": "serving.moe-operator.io/v1alpha1", "kind": "MoEDeployment",
            "metadata": {"name": m.metadata.name, "namespace": "default", "generation": 1, "uid": "u-1",
                         "annotations": {"autoscaling.moe-operator.io/capacity": json.dumps(
                             {"ascend": {"prefillTps": 10000, "decodeTps": 1000, "cachedPrefillTps": 100000}})}},
            "spec": {**m.spec.model_dump(by_alias=True, exclude_none=True),
                     "autoscaling": {"enabled": True, "intervalSeconds": 10, "metrics": metrics}}}
    autoscale.tick(copy.deepcopy(body), 1000.0)
    return cluster.status


@pytest.mark.parametrize("kind", ["prometheus", "scrape"])
def test_a_metrics_host_outside_the_allow_list_is_refused_and_never_asked(monkeypatch, server, kind):
    monkeypatch.setattr(autoscale, "METRICS_HOSTS", ["*.svc", "prometheus.monitoring.svc.cluster.local"],
                        raising=False)
    status = tick_with_metrics(monkeypatch, {kind: {"url": f"{server.url}/metrics"}})
    reason = status["lastDecisions"][-1]["reason"]
    assert "127.0.0.1" in reason and "--metrics-hosts" in reason, reason
    assert server.requests == [], "a request went to a host outside the allow-list"


@pytest.mark.parametrize("hosts", [[], ["127.0.0.*"]])
def test_an_allowed_or_unlisted_host_is_asked(monkeypatch, server, hosts):
    monkeypatch.setattr(autoscale, "METRICS_HOSTS", hosts, raising=False)
    status = tick_with_metrics(monkeypatch, {"prometheus": {"url": server.url}})
    assert server.requests and "--metrics-hosts" not in status["lastDecisions"][-1]["reason"]


def test_the_allow_list_flag_parses():
    args = build_parser().parse_args(["-A", "--metrics-hosts", "*.svc, prometheus.example.com"])
    assert autoscale.parse_hosts(args.metrics_hosts) == ["*.svc", "prometheus.example.com"]
    assert autoscale.parse_hosts("") == [] and autoscale.parse_hosts(None) == []


@pytest.mark.parametrize("flags, says", [
    (["--metrics-hosts", "http://prometheus:9090/"], "--metrics-hosts"),
    (["--metrics-hosts", "*.svc,host with space"], "--metrics-hosts"),
    (["--kuberay-namespace", "Ray_System"], "--kuberay-namespace"),
    (["--metrics-namespace", "mon.itoring"], "--metrics-namespace"),
    (["--kuberay-pod-labels", "no-equals"], "--kuberay-pod-labels"),
])
def test_a_bad_flag_is_one_clear_line_and_exit_2(capsys, flags, says):
    """A URL given as a host pattern would refuse every metrics URL; a namespace with capitals would never match
    KubeRay's: both were accepted silently and failed later, far from their cause."""
    from moe_operator.operator_main import main

    assert main(["-A", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {says}") and err.count("\n") == 1, err
