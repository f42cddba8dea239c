"""RBAC is sufficient: the real moe-operator, run out of the cluster with a TokenRequest token of the chart's
ServiceAccount (nothing else), reconciles examples/tiny-moe.yaml: RayService created, status and Events written,
the catalog ConfigMap read, and no request of its own refused (the worker-pod watch included).
"""
from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from chart_tools import CHART, ROOT, helm

pytestmark = pytest.mark.cluster_logs("kube-apiserver", "ray-operator")


def token_kubeconfig(cluster, token: str, path: Path) -> Path:
    """A kubeconfig with the admin kubeconfig's server and CA but only the ServiceAccount's bearer token."""
    admin = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    server = dict(admin["clusters"][0]["cluster"])
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "test", "cluster": server}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": "sa"}}],
    }))
    return path


def wait(what: str, probe, timeout: float, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log.exists() else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n--- operator log ---\n{tail}")


def get(cluster, *args):
    proc = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def test_operator_reconciles_an_example_with_only_the_chart_service_account(cluster, helm_bin, tmp_path):
    suffix = secrets.token_hex(3)
    release, release_ns, watched = f"moe{suffix}", f"moe-system-{suffix}", f"models-{suffix}"
    sa = f"{release}-moe-operator"
    kubeconfig = ["--kubeconfig", str(cluster.kubeconfig)]
    for ns in (release_ns, watched):
        cluster.kubectl("create", "namespace", ns)
    proc = None
    log = tmp_path / "operator.log"
    try:
        # Namespaced mode, one replica, standalone (the operator runs here, not as the chart's pods).
        helm("install", release, str(CHART), "--namespace", release_ns, *kubeconfig,
             "--set", f"watchNamespaces={{{watched}}}", "--set", "replicaCount=1", "--set", "peering.enabled=false",
             "--set", "catalog.prices.cpu=0.04", timeout=180)
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", "crd/moedeployments.serving.moe-operator.io"
        )
        token = cluster.kubectl("create", "token", sa, "-n", release_ns, "--duration=1h").stdout.strip()
        kc = token_kubeconfig(cluster, token, tmp_path / "sa.kubeconfig")
        whoami = subprocess.run([cluster.stack.state["bins"]["kubectl"] if cluster.stack else "kubectl",
                                 "--kubeconfig", str(kc), "auth", "whoami", "-o", "json"],
                                capture_output=True, text=True, timeout=30)
        assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == f"system:serviceaccount:{release_ns}:{sa}"

        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env.update(KUBECONFIG=str(kc), PYTHONUNBUFFERED="1")
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moe_operator.operator_main", "--namespace", watched, "--metrics-port", "0",
                 "--drift-interval", "3", "--catalog-configmap", f"{release_ns}/{sa}-catalog"],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

        # The example with live rebalancing on: the operator also creates the runtime admin token Secret.
        example = yaml.safe_load((ROOT / "examples" / "tiny-moe.yaml").read_text())
        example["spec"]["rebalance"] = {"enabled": True}
        cluster.kubectl("apply", "-n", watched, "-f", "-", input=json.dumps(example))
        rs = wait("the RayService", lambda: get(cluster, "rayservice", "tiny-moe", "-n", watched), 150, log)
        assert any(o["kind"] == "MoEDeployment" and o.get("controller") for o in rs["metadata"]["ownerReferences"])
        secret = get(cluster, "secret", "tiny-moe-runtime-admin", "-n", watched)
        assert secret and secret["data"]["token"], "the admin token Secret was not created before the RayService"
        assert secret["metadata"]["ownerReferences"][0]["kind"] == "MoEDeployment"
        moed = wait("status written", lambda: (m := get(cluster, "moed", "tiny-moe", "-n", watched))
                    and (m.get("status") or {}).get("observedGeneration") and m, 90, log)
        assert moed["status"]["observedGeneration"] == moed["metadata"]["generation"]
        # kopf's own patch of the MoEDeployment (its last-handled-configuration annotation) was allowed too.
        wait(
            "kopf's annotation",
            lambda: (
                "serving.moe-operator.io/last-handled-configuration"
                in (
                    (get(cluster, "moed", "tiny-moe", "-n", watched) or {}).get("metadata", {}).get("annotations") or {}
                )
            ),
            60,
            log,
        )
        events = wait(
            "an Event on the MoEDeployment",
            lambda: [
                e
                for e in get(cluster, "events", "-n", watched)["items"]
                if e["involvedObject"].get("kind") == "MoEDeployment" and e["involvedObject"]["name"] == "tiny-moe"
            ],
            60,
            log,
        )
        assert events[0]["source"].get("component", "kopf") or events[0].get("reportingComponent")

        # Deleting works with the operator running (a finalizer, if the operator sets one, is removed by a patch).
        cluster.kubectl("delete", "moed", "tiny-moe", "-n", watched, "--wait=false")
        wait("the MoEDeployment deleted", lambda: get(cluster, "moed", "tiny-moe", "-n", watched) is None, 60, log)
        assert proc.poll() is None, "operator exited"
        text = log.read_text(errors="replace")
        refused = [line for line in text.splitlines() if re.search(r"forbidden|403", line, re.I)
                   and re.search(r"moedeployments|rayservices|events|configmaps|kopfpeerings|secrets|pods", line)]
        assert not refused, "\n".join(refused)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if get(cluster, "moed", "tiny-moe", "-n", watched):  # the operator is gone: drop its finalizer by hand
            cluster.kubectl("patch", "moed", "tiny-moe", "-n", watched, "--type=merge",
                            "-p", '{"metadata":{"finalizers":null}}', check=False)
            cluster.kubectl("delete", "moed", "tiny-moe", "-n", watched, "--wait=false", check=False)
        helm("uninstall", release, "--namespace", release_ns, *kubeconfig, check=False, timeout=120)
        for ns in (release_ns, watched):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
