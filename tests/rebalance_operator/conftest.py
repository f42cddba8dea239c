"""Fixtures of the rebalancer's control-plane tests: the CRD (as generated now) and a real ``moe-operator``."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))                       # fake_runtime
sys.path.insert(0, str(Path(__file__).parent.parent / "operator"))   # operator_harness
from operator_harness import CRD, Operator  # noqa: E402


@pytest.fixture(scope="module")
def crd(cluster):
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/moedeployments.serving.moe-operator.io")
    return CRD


@pytest.fixture
def operator(cluster, crd, namespace, tmp_path):
    op = Operator(cluster.kubeconfig, [namespace], tmp_path / "operator.log").start()
    yield op
    op.stop()
