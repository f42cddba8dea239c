"""Chart value ``metricsHosts`` (issue 14 item 10): the operator's allow-list of metrics hosts, passed as
``--metrics-hosts``; empty (the default) renders no flag. The schema takes host patterns, not URLs."""
from __future__ import annotations

import jsonschema
import pytest

from chart_tools import by_kind, render
from test_values_schema import SCHEMA, merged


def operator_args(*set_values: str) -> list[str]:
    (dep,) = by_kind(render(set_values=set_values), "Deployment")
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_metrics_hosts_render_the_flag_and_the_default_renders_none(helm_bin):
    assert not [a for a in operator_args() if a.startswith("--metrics-hosts")]
    args = operator_args("metricsHosts={*.svc,prometheus.example.com}")
    assert "--metrics-hosts=*.svc,prometheus.example.com" in args


def test_schema_takes_host_patterns_not_urls():
    jsonschema.validate(merged({"metricsHosts": ["*.svc", "prometheus.monitoring.svc.cluster.local"]}), SCHEMA)
    for bad in (["http://prometheus:9090"], ["a,b"], "*.svc"):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(merged({"metricsHosts": bad}), SCHEMA)
