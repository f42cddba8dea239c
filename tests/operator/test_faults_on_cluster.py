"""Faults: operator SIGKILLed mid-create, RayService deleted or edited by hand, 409 conflicts, replicas-only changes."""
from __future__ import annotations

import json
import time

import pytest

from bad_specs import GOOD
from operator_harness import Operator, get, wait_for

pytestmark = pytest.mark.cluster_logs("ray-operator", "kube-apiserver")


def manifest(name: str, spec: dict = GOOD) -> str:
    return json.dumps({"apiVersion": "serving.moe-operator.io/v1alpha1", "kind": "MoEDeployment",
                       "metadata": {"name": name}, "spec": spec})


def rayservices(cluster, ns):
    return get(cluster, "rayservices", "-n", ns)["items"]


@pytest.mark.timing_sensitive
def test_sigkill_mid_create_then_restart_converges_to_one_rayservice_each(cluster, crd, namespace, tmp_path):
    names = [f"m{i}" for i in range(12)]
    op = Operator(cluster.kubeconfig, [namespace], tmp_path / "op1.log").start()
    try:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input="\n---\n".join(manifest(n) for n in names))
        wait_for("the first RayService", lambda: rayservices(cluster, namespace), on_fail=op.log_tail)
        op.kill9()                                                     # in the middle of creating the twelve
        made_before = len(rayservices(cluster, namespace))
    finally:
        op.stop()
    op2 = Operator(cluster.kubeconfig, [namespace], tmp_path / "op2.log").start()
    try:
        items = wait_for("every MoEDeployment to have its RayService", lambda: (lambda xs: xs if len(xs) >= len(names)
                         else None)(rayservices(cluster, namespace)), on_fail=op2.log_tail)
        time.sleep(3)                                                  # a late duplicate would show up here
        items = rayservices(cluster, namespace)
        assert sorted(i["metadata"]["name"] for i in items) == sorted(names)
        for i in items:
            refs = [r for r in i["metadata"].get("ownerReferences", []) if r.get("kind") == "MoEDeployment"]
            assert len(refs) == 1 and refs[0]["name"] == i["metadata"]["name"] and refs[0]["controller"]
        print(f"RayServices before the kill: {made_before}/{len(names)}")
    finally:
        op2.stop()


@pytest.mark.timing_sensitive
def test_hand_deleted_rayservice_is_back_within_10_seconds(cluster, namespace, operator):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("svc"))
    first = wait_for(
        "RayService", lambda: get(cluster, "rayservice", "svc", "-n", namespace), on_fail=operator.log_tail
    )
    t0 = time.monotonic()
    cluster.kubectl("delete", "rayservice", "svc", "-n", namespace, "--wait=false")
    back = wait_for("the RayService to come back", lambda: (lambda r: r if r and r["metadata"]["uid"] != first[
        "metadata"]["uid"] else None)(get(cluster, "rayservice", "svc", "-n", namespace)), timeout=10, interval=0.1,
        on_fail=operator.log_tail)
    elapsed = time.monotonic() - t0
    print(f"hand-deleted RayService recreated in {elapsed:.2f} s")
    assert back["spec"]["serveConfigV2"] == first["spec"]["serveConfigV2"]
    events = get(cluster, "events", "-n", namespace, "--field-selector", "involvedObject.name=svc")["items"]
    assert sum(e["reason"] == "Created" for e in events) >= 1


@pytest.mark.timing_sensitive
def test_hand_edit_of_owned_field_is_repaired(cluster, namespace, operator):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("edit"))
    before = wait_for("RayService", lambda: get(cluster, "rayservice", "edit", "-n", namespace))
    cluster.kubectl("patch", "rayservice", "edit", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"serveConfigV2": "applications: []\n"}}))
    wait_for("the serveConfigV2 repaired", lambda: get(cluster, "rayservice", "edit", "-n", namespace)["spec"][
        "serveConfigV2"] == before["spec"]["serveConfigV2"], timeout=60, on_fail=operator.log_tail)


@pytest.mark.timing_sensitive
def test_replicas_only_change_keeps_the_raycluster_and_is_not_reverted(cluster, namespace, operator):
    """Replicas on the RayService never replace the RayCluster; KubeRay v1.5.0 does not copy them to it either.

    KubeRay hashes rayClusterConfig without replicas/min/max: a replicas-only change gives the same hash, so it
    neither rolls out a new cluster nor updates the running one (shouldUpdateCluster). Pods follow the RayCluster's
    own worker-group replicas, which KubeRay then leaves alone: that is where an actuator must scale pods.
    """
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("scale"))
    wait_for("RayService", lambda: get(cluster, "rayservice", "scale", "-n", namespace))
    rc = wait_for("RayCluster", lambda: get(cluster, "rayclusters", "-n", namespace)["items"])[0]
    rc_name = rc["metadata"]["name"]

    def workers():
        return [p for p in get(cluster, "pods", "-n", namespace, "-l", f"ray.io/cluster={rc_name},ray.io/group=cpu")[
            "items"] if not p["metadata"].get("deletionTimestamp")]

    wait_for("one worker pod", lambda: len(workers()) == 1)
    # 1. what an actuator patching only the RayService does: worker replicas 1 -> 2
    cluster.kubectl("patch", "rayservice", "scale", "-n", namespace, "--type=json", "-p", json.dumps(
        [{"op": "replace", "path": "/spec/rayClusterConfig/workerGroupSpecs/0/replicas", "value": 2}]))
    time.sleep(6)   # two drift intervals of the operator under test, several KubeRay reconciles
    rs = get(cluster, "rayservice", "scale", "-n", namespace)
    assert rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] == 2, "operator reverted the replicas"
    names = [c["metadata"]["name"] for c in get(cluster, "rayclusters", "-n", namespace)["items"]]
    assert names == [rc_name], f"KubeRay rolled out a new RayCluster: {names}"
    live_rc = get(cluster, "rayclusters", rc_name, "-n", namespace)
    assert live_rc["spec"]["workerGroupSpecs"][0]["replicas"] == 1, "KubeRay now propagates replicas: update docs"
    # 2. scaling the RayCluster's group itself adds the pod, and nobody reverts it
    cluster.kubectl("patch", "raycluster", rc_name, "-n", namespace, "--type=json", "-p", json.dumps(
        [{"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 2}]))
    wait_for("two worker pods", lambda: len(workers()) == 2, timeout=90)
    time.sleep(4)
    assert get(cluster, "rayclusters", rc_name, "-n", namespace)["spec"]["workerGroupSpecs"][0]["replicas"] == 2
    assert [c["metadata"]["name"] for c in get(cluster, "rayclusters", "-n", namespace)["items"]] == [rc_name]


@pytest.mark.timing_sensitive
def test_no_write_when_nothing_changed(cluster, namespace, operator):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("quiet"))
    # settled: the status counts the worker pod once kwok has made it Ready (handlers/readiness.py); that is a change
    wait_for("status counts the ready worker", lambda: ((get(cluster, "moed", "quiet", "-n", namespace) or {}).get(
        "status") or {}).get("replicas") == "cpu=1/1", timeout=120)
    time.sleep(4)
    a = (get(cluster, "moed", "quiet", "-n", namespace)["metadata"]["resourceVersion"],
         get(cluster, "rayservice", "quiet", "-n", namespace)["metadata"]["generation"])
    time.sleep(8)   # several drift-check intervals (3 s in tests)
    b = (get(cluster, "moed", "quiet", "-n", namespace)["metadata"]["resourceVersion"],
         get(cluster, "rayservice", "quiet", "-n", namespace)["metadata"]["generation"])
    assert a == b, f"writes without a change: MoEDeployment resourceVersion / RayService generation {a} -> {b}"


def test_conflicting_write_is_retried(cluster, crd, namespace, monkeypatch):
    """A replace that races another writer gets 409 from the real API server and succeeds on a re-read."""
    from kubernetes import client, config

    from moe_operator.handlers import kube

    monkeypatch.setattr(kube, "_api", client.CustomObjectsApi(config.new_client_from_config(str(cluster.kubeconfig))))
    body = {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "race", "namespace": namespace},
            "spec": {"serveConfigV2": "a", "rayClusterConfig": {"headGroupSpec": {"rayStartParams": {}, "template": {
                "spec": {"containers": [{"name": "ray-head", "image": "x"}]}}}}}}
    assert kube.create_rayservice_object(namespace, body) is not None
    assert kube.create_rayservice_object(namespace, body) is None    # AlreadyExists is not an error
    calls = []

    def mutate(cur):
        calls.append(cur["metadata"]["resourceVersion"])
        if len(calls) == 1:   # someone else writes between our read and our replace
            cluster.kubectl("annotate", "rayservice", "race", "-n", namespace, "other=1")
        cur["spec"]["serveConfigV2"] = "b"
        return True

    before = dict(kube.Writes.counts)
    assert kube.replace_with_retry(namespace, "race", mutate) is True
    assert len(calls) == 2 and calls[0] != calls[1], calls
    live = kube.get_rayservice(namespace, "race")
    assert live["spec"]["serveConfigV2"] == "b" and live["metadata"]["annotations"]["other"] == "1"
    assert kube.Writes.counts.get("replace", 0) == before.get("replace", 0) + 1
