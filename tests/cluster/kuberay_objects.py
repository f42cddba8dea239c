"""RayService manifests and polling helpers for the control-plane acceptance tests (tests/cluster)."""
from __future__ import annotations

import json
import time

H800 = {"nvidia.com/gpu.product": "NVIDIA-H800"}
A100 = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
ASCEND_910B = {"accelerator": "huawei-Ascend910"}
RAY_IMAGE = "rayproject/ray:2.60.0"  # never pulled: kwok only pretends to run containers


def group(name: str, replicas: int, node_selector: dict, limits: dict, *, cpu: str = "8",
          memory: str = "64Gi") -> dict:
    """A worker group: ``replicas`` pods on nodes matching ``node_selector`` with ``limits`` (device counts)."""
    return {
        "groupName": name, "replicas": replicas, "minReplicas": 0, "maxReplicas": max(replicas, 1),
        "rayStartParams": {},
        "template": {"spec": {
            "nodeSelector": node_selector,
            "containers": [{"name": "ray-worker", "image": RAY_IMAGE,
                            "resources": {"requests": {"cpu": cpu, "memory": memory, **limits},
                                          "limits": {"cpu": cpu, "memory": memory, **limits}}}],
        }},
    }


def rayservice(name: str, head_selector: dict, workers: list[dict]) -> dict:
    """A RayService whose head (CPU only) runs on ``head_selector`` nodes, with the given worker groups."""
    return {
        "apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": name},
        "spec": {
            "serveConfigV2": "applications: []\n",
            "rayClusterConfig": {
                "rayVersion": "2.60.0",
                "headGroupSpec": {"rayStartParams": {}, "template": {"spec": {
                    "nodeSelector": head_selector,
                    "containers": [{"name": "ray-head", "image": RAY_IMAGE,
                                    "resources": {"requests": {"cpu": "4", "memory": "16Gi"},
                                                  "limits": {"cpu": "4", "memory": "16Gi"}}}],
                }}},
                "workerGroupSpecs": workers,
            },
        },
    }


def wait_for(what: str, probe, timeout: float = 90, interval: float = 0.5):
    """Poll ``probe()`` until it returns something truthy; fail with ``what`` and the last value otherwise."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


def get_json(cluster, *args: str):
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def owned_rayclusters(cluster, namespace: str, rayservice_name: str) -> list[dict]:
    """RayClusters in ``namespace`` whose controller owner is the named RayService."""
    items = get_json(cluster, "rayclusters.ray.io", "-n", namespace)["items"]
    return [rc for rc in items if any(o.get("kind") == "RayService" and o.get("name") == rayservice_name
                                      and o.get("controller") for o in rc["metadata"].get("ownerReferences", []))]


def pods_of(cluster, namespace: str, raycluster: str) -> list[dict]:
    return get_json(cluster, "pods", "-n", namespace, "-l", f"ray.io/cluster={raycluster}")["items"]


def node_labels(cluster) -> dict[str, dict]:
    return {n["metadata"]["name"]: n["metadata"]["labels"] for n in get_json(cluster, "nodes")["items"]}
