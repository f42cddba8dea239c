"""Fixtures: the CRD once, and a ``moe-operator`` per test namespace (the harness of tests/operator)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "operator"))       # operator_harness
sys.path.insert(0, str(HERE.parent / "autoscaling"))    # exporter
from operator_harness import CRD, Operator  # noqa: E402


@pytest.fixture(scope="session")
def crd(cluster):
    cluster.kubectl("apply", "--server-side", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/moedeployments.serving.moe-operator.io")
    return CRD


@pytest.fixture
def operator(cluster, crd, namespace, tmp_path, request):
    op = Operator(cluster.kubeconfig, [namespace], tmp_path / "operator.log").start()
    yield op
    op.stop()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"\n--- moe-operator log (tail) ---\n{op.log_tail(120)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep
