"""Shared fixtures: ``cluster`` (a real Kubernetes control plane for the session) and ``namespace`` (one per test).

The control plane is the one ``hack/cluster.sh`` runs (code in ``hack/k8s_stack.py``): etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok fake accelerator nodes, KubeRay CRDs and ray-operator.
Set ``MOE_TEST_KUBECONFIG`` to reuse a running one (e.g. from ``eval "$(hack/cluster.sh up)"``) instead of
starting one per session. A failing test that used the cluster gets the tail of the component logs and the
Events of its namespace in its report.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "hack"))

import k8s_stack  # noqa: E402  (lives in hack/, shared with hack/cluster.sh)
from require import need  # noqa: E402

#: Components whose logs a failing cluster test prints, unless it names others with @pytest.mark.cluster_logs.
DEFAULT_LOG_COMPONENTS = ("ray-operator", "kube-scheduler", "kube-controller-manager", "kwok", "kube-apiserver")


class Cluster:
    """Handle on the test control plane: its kubeconfig, kubectl, and component logs."""

    def __init__(self, kubeconfig: Path, stack: k8s_stack.Stack | None):
        self.kubeconfig = Path(kubeconfig)
        self.stack = stack  # None when MOE_TEST_KUBECONFIG names a cluster we know nothing else about

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess:
        """``kubectl --kubeconfig <ours> *args``; text output; raises on failure when ``check``."""
        kubectl = (self.stack.state.get("bins", {}).get("kubectl") if self.stack else None) \
            or shutil.which("kubectl") or "kubectl"
        proc = subprocess.run([kubectl, "--kubeconfig", str(self.kubeconfig), *args], input=input,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode:
            raise AssertionError(f"kubectl {' '.join(args)} -> rc {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def log_tail(self, component: str, lines: int = 40) -> str:
        """Last lines of a component's log (component names: k8s_stack.COMPONENTS)."""
        if self.stack is None:
            return f"(no logs: MOE_TEST_KUBECONFIG={self.kubeconfig} has no state.json beside it)"
        return self.stack.log_tail(component, lines)

    def api_client(self):
        """A ``kubernetes.client.ApiClient`` for this cluster (imports the kubernetes package lazily)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster_logs(*components): component logs to print when the test fails")


def pytest_collection_modifyitems(items):
    """Tests that use the control plane carry the ``cluster`` marker, so ``-m 'not cluster'`` leaves them out."""
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Cluster:
    """The session's control plane: started once (about 15-30 s), stopped at the end of the session."""
    external = os.environ.get("MOE_TEST_KUBECONFIG")
    if external:
        kc = Path(external)
        state = kc.parent / "state.json"
        c = Cluster(kc, k8s_stack.Stack(kc.parent) if state.exists() else None)
        probe = c.kubectl("get", "--raw", "/readyz", check=False, timeout=15)
        if probe.returncode:
            pytest.fail(f"MOE_TEST_KUBECONFIG={kc} is not reachable: {probe.stderr.strip()}", pytrace=False)
        yield c
        return
    try:
        k8s_stack.find_binaries()
    except k8s_stack.MissingBinaries as e:
        need("control plane", str(e))
    stack = k8s_stack.Stack(tmp_path_factory.mktemp("k8s"))
    try:
        stack.up()
    except k8s_stack.StackError as e:
        pytest.fail(f"control plane did not start: {e}", pytrace=False)
    try:
        yield Cluster(stack.kubeconfig, stack)
    finally:
        stack.down()


@pytest.fixture
def namespace(cluster: Cluster, request) -> str:
    """A fresh namespace named after the test, deleted afterwards (without waiting for its finalization)."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base}-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failing cluster test, attach the component log tails and the namespace's Events to the report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or call.when == "teardown":
        return
    c = item.funcargs.get("cluster") if hasattr(item, "funcargs") else None
    if not isinstance(c, Cluster):
        return
    marker = item.get_closest_marker("cluster_logs")
    components = marker.args if marker and marker.args else DEFAULT_LOG_COMPONENTS
    for component in components:
        report.sections.append((f"{component} log (tail)", c.log_tail(component, 30)))
    ns = item.funcargs.get("namespace")
    for value in item.funcargs.values():  # module-scoped fixtures may carry their own {"namespace": ...}
        if not isinstance(ns, str) and isinstance(value, dict) and isinstance(value.get("namespace"), str):
            ns = value["namespace"]
    if isinstance(ns, str):
        try:
            events = c.kubectl("get", "events", "-n", ns, "--sort-by=.lastTimestamp", check=False, timeout=15)
            report.sections.append((f"events in {ns}", events.stdout or events.stderr))
        except subprocess.SubprocessError as e:
            report.sections.append((f"events in {ns}", f"(kubectl failed: {e})"))
