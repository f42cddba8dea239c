"""Deleting a RayService garbage-collects its RayCluster and pods (owner references + kube-controller-manager)."""
from __future__ import annotations

import json

import pytest

from kuberay_objects import A100, group, owned_rayclusters, pods_of, rayservice, wait_for

pytestmark = pytest.mark.cluster_logs("ray-operator", "kube-controller-manager", "kwok")


def test_deleting_rayservice_removes_raycluster_and_pods(cluster, namespace):
    svc = rayservice("gc", A100, [group("a100", 1, A100, {"nvidia.com/gpu": "4"})])
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(svc))
    rc = wait_for("a RayCluster owned by RayService gc", lambda: owned_rayclusters(cluster, namespace, "gc"))[0]
    name = rc["metadata"]["name"]
    pods = wait_for("head and worker pods Running", lambda: [
        p for p in pods_of(cluster, namespace, name) if p["status"].get("phase") == "Running"
    ] if len(pods_of(cluster, namespace, name)) == 2 else None, timeout=90)
    assert len(pods) == 2

    cluster.kubectl("delete", "rayservice", "gc", "-n", namespace, "--wait=true", timeout=60)
    wait_for("the RayCluster to be garbage-collected",
             lambda: not cluster.kubectl("get", "raycluster", name, "-n", namespace, "--ignore-not-found",
                                         "-o", "name").stdout.strip(), timeout=60)
    wait_for("the pods to be garbage-collected", lambda: not pods_of(cluster, namespace, name), timeout=60)
