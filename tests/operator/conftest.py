"""Fixtures of the operator acceptance tests: the CRD installed once, and a ``moe-operator`` per test namespace."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))   # operator_harness, bad_specs live beside the tests
sys.path.insert(0, str(Path(__file__).parent.parent / "autoscaling"))   # exporter: the contract metrics, served in-test
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
        print(f"\n--- moe-operator log (tail) ---\n{op.log_tail()}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep
        op = item.funcargs.get("operator") if hasattr(item, "funcargs") else None
        if rep.failed and isinstance(op, Operator):
            rep.sections.append(("moe-operator log (tail)", op.log_tail()))
