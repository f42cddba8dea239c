"""The operator's autoscaler against the real control plane: load up -> RayService and RayCluster scaled, pods follow,
Event and status tell it; exporter gone -> hold (no scale-down) and the status says the metrics are missing."""
from __future__ import annotations

import json
import socket
import time

import pytest

from exporter import Exporter
from operator_harness import condition, get, wait_for

pytestmark = pytest.mark.cluster_logs("ray-operator", "kube-apiserver")

# tokens/s one replica serves (annotation = measured capacity): 20 generated tok/s at targetUtilization 0.7 need
# 1 replica; 150 tok/s need ceil(150 / 0.7 / 100) = 3 by the model, 2 once the policy has learnt from the served
# throughput that a replica does more (its online correction), so the test accepts 2 or 3.
CAPACITY = {"cpu": {"prefillTps": 1000, "decodeTps": 100, "cachedPrefillTps": 10000}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manifest(name: str, url: str) -> str:
    return json.dumps({
        "apiVersion": "serving.moe-operator.io/v1alpha1", "kind": "MoEDeployment",
        "metadata": {"name": name, "annotations": {"autoscaling.moe-operator.io/capacity": json.dumps(CAPACITY)}},
        "spec": {"model": {"source": "builtin://tiny-moe", "architecture": "tiny", "servedModelName": "m"},
                 "engine": "torch",
                 "pools": [{"name": "cpu", "accelerator": "cpu", "devicesPerReplica": 1, "minReplicas": 1,
                            "maxReplicas": 3, "pricePerDeviceHour": 0.05}],
                 "autoscaling": {"enabled": True, "intervalSeconds": 5, "targetUtilization": 0.7,
                                 "metrics": {"scrape": {"url": url}, "staleAfterSeconds": 30}}}})


def test_load_scales_rayservice_and_raycluster_then_missing_metrics_hold(cluster, namespace, operator):
    exp = Exporter(free_port(), model="m", pools={"cpu": 1})
    url = f"http://127.0.0.1:{exp.server.server_port}/metrics"
    try:
        exp.load["generated"] = 20.0
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("auto", url))
        rs = wait_for("RayService", lambda: get(cluster, "rayservice", "auto", "-n", namespace), on_fail=operator.log_tail)
        assert rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] == 1
        rc = wait_for("RayCluster", lambda: (get(cluster, "rayclusters", "-n", namespace) or {}).get("items"))[0]
        rc_name = rc["metadata"]["name"]

        def workers():
            return [p for p in get(cluster, "pods", "-n", namespace, "-l", f"ray.io/cluster={rc_name},ray.io/group=cpu")[
                "items"] if not p["metadata"].get("deletionTimestamp")]

        def status():
            return (get(cluster, "moedeployment", "auto", "-n", namespace) or {}).get("status") or {}

        wait_for("a first decision at low load", lambda: status().get("tokensPerSecond") is not None, timeout=30,
                 on_fail=operator.log_tail)
        assert [p["desiredReplicas"] for p in status()["pools"]] == [1], status()

        exp.load["generated"] = 150.0
        rs = wait_for("the RayService scaled up", lambda: (lambda r: r if r["spec"]["rayClusterConfig"][
            "workerGroupSpecs"][0]["replicas"] > 1 else None)(get(cluster, "rayservice", "auto", "-n", namespace)),
            timeout=40, on_fail=operator.log_tail)
        n = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"]
        assert n in (2, 3), n
        assert f"num_replicas: {n}" in rs["spec"]["serveConfigV2"]
        wait_for(f"the RayCluster's worker group at {n}", lambda: get(cluster, "rayclusters", rc_name, "-n", namespace)[
            "spec"]["workerGroupSpecs"][0]["replicas"] == n, timeout=15, on_fail=operator.log_tail)
        wait_for(f"{n} worker pods", lambda: len(workers()) == n, timeout=40)
        assert [c["metadata"]["name"] for c in get(cluster, "rayclusters", "-n", namespace)["items"]] == [rc_name]
        events = wait_for("a ScaledUp Event", lambda: [e for e in get(cluster, "events", "-n", namespace,
                          "--field-selector", "involvedObject.name=auto")["items"] if e["reason"] == "ScaledUp"])
        assert f"cpu={n}" in events[0]["message"] and "scale up" in events[0]["message"], events[0]
        st = wait_for("status after the scale-up", lambda: (lambda s: s if [p["desiredReplicas"] for p in s.get(
            "pools") or []] == [n] else None)(status()), timeout=15)
        assert st["tokensPerSecond"] > 100, st
        assert st["costPerHour"] == pytest.approx(0.05 * n, abs=1e-6), st
        assert st["lastDecisions"][-1]["replicas"] == {"cpu": n}, st["lastDecisions"]
        assert len(st["lastDecisions"]) <= 20

        exp.close()
        exp = None
        held = wait_for("a hold in status", lambda: (lambda s: s if (s.get("lastDecisions") or [{}])[-1].get(
            "reason", "").startswith("hold") else None)(status()), timeout=30, on_fail=operator.log_tail)
        bl = condition({"status": held}, "BudgetLimited")
        assert bl is not None and bl["status"] == "Unknown" and "holding replicas" in bl["message"], held
        assert "scrape" in held["lastDecisions"][-1]["reason"], held["lastDecisions"][-1]
        assert get(cluster, "rayclusters", rc_name, "-n", namespace)["spec"]["workerGroupSpecs"][0]["replicas"] == n
        assert get(cluster, "rayservice", "auto", "-n", namespace)["spec"]["rayClusterConfig"][
            "workerGroupSpecs"][0]["replicas"] == n
        assert [p["desiredReplicas"] for p in held["pools"]] == [n], held
    finally:
        if exp is not None:
            exp.close()


def vllm_manifest(name: str, url: str) -> str:
    """examples/mixtral-8x7b-ascend.yaml (engine vllm, one Ray Serve LLM app) autoscaled from the in-test exporter."""
    import yaml

    from operator_harness import ROOT

    m = yaml.safe_load((ROOT / "examples" / "mixtral-8x7b-ascend.yaml").read_text())
    m["metadata"] = {"name": name, "annotations": {"autoscaling.moe-operator.io/capacity": json.dumps(
        {"ascend": {"prefillTps": 1000, "decodeTps": 100, "cachedPrefillTps": 10000}})}}
    m["spec"]["autoscaling"] = {"enabled": True, "intervalSeconds": 5, "targetUtilization": 0.7,
                                "scaleDownStabilizationSeconds": 30,
                                "metrics": {"scrape": {"url": url}, "staleAfterSeconds": 30}}
    return json.dumps(m)


def test_vllm_pool_scaled_and_a_restarted_operator_keeps_replicas_for_the_window(cluster, namespace, operator):
    """engine vllm: the LLM server deployment's num_replicas override and worker group move (args do not),
    KubeRay's RayCluster follows in place;
    the operator restarts as the load drops: the restored History keeps the replicas, then scales down."""
    import yaml

    exp = Exporter(free_port(), model="mixtral-8x7b", pools={"ascend": 1}, ready_gauge=False)   # vLLM: no gauge
    url = f"http://127.0.0.1:{exp.server.server_port}/metrics"

    def rs():
        return get(cluster, "rayservice", "mx", "-n", namespace)

    def llm_replicas():   # the LLM server deployment's override; the LLMConfig in args keeps the start count
        app = yaml.safe_load(rs()["spec"]["serveConfigV2"])["applications"][0]
        assert app["args"]["llm_configs"][0]["deployment_config"]["num_replicas"] == 1
        return app["deployments"][0]["num_replicas"]

    try:
        exp.load["generated"] = 20.0
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=vllm_manifest("mx", url))
        wait_for("RayService", rs, on_fail=operator.log_tail)
        rc_name = wait_for("RayCluster", lambda: (get(cluster, "rayclusters", "-n", namespace) or {}).get("items"))[0][
            "metadata"]["name"]
        exp.load["generated"] = 180.0                    # 180 / 0.7 x 1.075 / 100 -> 3 replicas (2 once corrected)
        n = wait_for("the LLM server override scaled up", lambda: (lambda k: k if k > 1 else None)(llm_replicas()), timeout=40,
                     on_fail=operator.log_tail)
        assert n in (2, 3), n
        assert rs()["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] == n
        wait_for(f"the RayCluster's worker group at {n}", lambda: get(cluster, "rayclusters", rc_name, "-n", namespace)[
            "spec"]["workerGroupSpecs"][0]["replicas"] == n, timeout=15, on_fail=operator.log_tail)
        wait_for("status desiredReplicas", lambda: [p.get("desiredReplicas") for p in (get(
            cluster, "moedeployment", "mx", "-n", namespace).get("status") or {}).get("pools") or []] == [n], timeout=15)

        operator.stop()
        n = llm_replicas()   # what the stopped operator left: it can act once more while it shuts down (~6 s)
        assert n in (2, 3), n
        wait_for("status desiredReplicas after the stop", lambda: [p.get("desiredReplicas") for p in (get(
            cluster, "moedeployment", "mx", "-n", namespace).get("status") or {}).get("pools") or []] == [n], timeout=5)
        exp.load["generated"] = 20.0                     # the load drops while the operator restarts
        operator.start()
        wait_for("the History restored from status", lambda: f"desired ascend={n} (from status.pools)" in
                 operator.log_tail(200), timeout=30, on_fail=operator.log_tail)
        time.sleep(12)                                   # >= 2 ticks of fresh low load inside the 30 s window
        assert llm_replicas() == n, operator.log_tail()
        wait_for("the scale-down a window after the restart", lambda: llm_replicas() == 1, timeout=60,
                 on_fail=operator.log_tail)
        assert rs()["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] == 1
        assert [c["metadata"]["name"] for c in get(cluster, "rayclusters", "-n", namespace)["items"]] == [rc_name]
    finally:
        exp.close()
