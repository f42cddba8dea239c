"""KubeRay turns a RayService into a RayCluster whose pods kube-scheduler places on the right accelerator nodes."""
from __future__ import annotations

import json
import secrets

import pytest

from kuberay_objects import (ASCEND_910B, H800, group, node_labels, owned_rayclusters, pods_of, rayservice,
                             wait_for)

pytestmark = pytest.mark.cluster_logs("ray-operator", "kube-scheduler", "kwok")


@pytest.fixture(scope="module")
def placed(cluster):
    """One RayService with an H800 head, 2 H800 workers x 8 GPUs, 1 Ascend worker x 8 NPUs and an oversized group.

    Module-scoped (one RayService for the four tests), in a namespace of its own deleted afterwards.
    """
    namespace = f"placement-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", namespace)
    yield _place(cluster, namespace)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _place(cluster, namespace: str) -> dict:
    svc = rayservice("moe", H800, [
        group("h800", 2, H800, {"nvidia.com/gpu": "8"}),
        group("ascend", 1, ASCEND_910B, {"huawei.com/Ascend910": "8"}),
        group("too-big", 1, H800, {"nvidia.com/gpu": "16"}),
    ])
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(svc))
    rc = wait_for("KubeRay to create a RayCluster owned by the RayService",
                  lambda: owned_rayclusters(cluster, namespace, "moe"))[0]
    name = rc["metadata"]["name"]

    def settled():
        pods = pods_of(cluster, namespace, name)
        groups = {}
        for p in pods:
            groups.setdefault(p["metadata"]["labels"].get("ray.io/group"), []).append(p)
        running = {g: [p for p in ps if p["status"].get("phase") == "Running"] for g, ps in groups.items()}
        ok = (len(running.get("headgroup", [])) == 1 and len(running.get("h800", [])) == 2
              and len(running.get("ascend", [])) == 1 and len(groups.get("too-big", [])) == 1)
        return groups if ok else None

    groups = wait_for("head, 2 H800 workers and the Ascend worker Running", settled, timeout=120)
    return {"raycluster": rc, "groups": groups, "labels": node_labels(cluster), "namespace": namespace}


def test_raycluster_derived_from_rayservice(placed):
    rc = placed["raycluster"]
    assert rc["metadata"]["name"].startswith("moe-")
    specs = {g["groupName"]: g for g in rc["spec"]["workerGroupSpecs"]}
    assert set(specs) == {"h800", "ascend", "too-big"}
    assert specs["h800"]["template"]["spec"]["nodeSelector"] == H800


def test_head_and_gpu_workers_run_on_h800_nodes(placed):
    labels, groups = placed["labels"], placed["groups"]
    for pod in groups["headgroup"] + groups["h800"]:
        node = pod["spec"]["nodeName"]
        assert labels[node]["nvidia.com/gpu.product"] == "NVIDIA-H800", (pod["metadata"]["name"], node)
        assert pod["status"]["phase"] == "Running"
    workers = groups["h800"]
    for pod in workers:
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "8"
    # 8 GPUs each and 8 per node: the scheduler must spread the two workers over both H800 nodes.
    assert len({p["spec"]["nodeName"] for p in workers}) == 2


def test_ascend_worker_runs_on_ascend_node(placed):
    (pod,) = placed["groups"]["ascend"]
    node_labels_ = placed["labels"][pod["spec"]["nodeName"]]
    assert node_labels_["accelerator"] == "huawei-Ascend910"
    assert node_labels_["kubernetes.io/arch"] == "arm64"
    assert pod["spec"]["containers"][0]["resources"]["limits"]["huawei.com/Ascend910"] == "8"
    assert pod["status"]["phase"] == "Running"


def test_oversized_group_pending_with_failed_scheduling(placed, cluster):
    (pod,) = placed["groups"]["too-big"]
    name, ns = pod["metadata"]["name"], placed["namespace"]

    def failed_scheduling():
        events = json.loads(cluster.kubectl(
            "get", "events", "-n", ns, "--field-selector",
            f"involvedObject.name={name},reason=FailedScheduling", "-o", "json").stdout)["items"]
        return events

    events = wait_for("a FailedScheduling event for the oversized pod", failed_scheduling, timeout=60)
    assert "nvidia.com/gpu" in events[0]["message"], events[0]["message"]
    current = json.loads(cluster.kubectl("get", "pod", "-n", ns, name, "-o", "json").stdout)
    assert current["status"]["phase"] == "Pending"
    assert not current["spec"].get("nodeName")
