"""Scale-down on the real control plane and KubeRay v1.5.0 (issue 13): Serve's count drops first, the worker pods stay
while the Ray dashboard shows them holding Serve replicas, then the RayCluster names exactly the idle pod in
``workersToDelete`` and KubeRay deletes that pod and no other.

kwok runs no Ray, so the dashboard is a stand-in on loopback (``FakeDashboard``) answering the three GETs the operator
makes with the shapes Ray 2.60 sends (tests/autoscaling/data/ray260_*.json); which pod IPs hold a replica is this
test's input. Load and latency are inputs too (the exporter, as in test_autoscale_on_cluster.py); the burst reserve
is off, so only the load decides the scale-down.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from exporter import Exporter
from operator_harness import get, wait_for
from test_autoscale_on_cluster import HIGH, LOW, TPOT_S, TTFT_S, manifest

pytestmark = pytest.mark.cluster_logs("ray-operator", "kwok")


class FakeDashboard:
    """GET /api/serve/applications/, /api/v0/placement_groups, /api/v0/nodes; ``busy`` holds the pod IPs that
    hold a Serve replica of ``engine-cpu``. Every request path is recorded."""

    def __init__(self):
        self.busy: list[str] = []
        self.apps: list[str] = []           # the applications Serve reports (the RayService's, once known)
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.paths.append(self.path)
                body = json.dumps(outer.answer(self.path.split("?")[0])).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def answer(self, path: str) -> dict:
        busy = list(self.busy)
        if path == "/api/serve/applications/":
            replicas = [{"node_id": f"node-{ip}", "node_ip": ip, "state": "RUNNING",
                         "actor_name": f"SERVE_REPLICA::{self.apps[0]}#engine-cpu#{i}"} for i, ip in enumerate(busy)]
            apps = {a: {"deployments": {"engine-cpu": {"replicas": replicas if i == 0 else []}}}
                    for i, a in enumerate(self.apps)}
            return {"controller_info": {"actor_id": "c0ffee", "node_id": "node-head"}, "applications": apps,
                    "proxies": {}}
        rows = ([{"node_id": f"node-{ip}", "node_ip": ip, "state": "ALIVE"} for ip in busy]
                if path == "/api/v0/nodes" else [])
        return {"result": True, "msg": "", "data": {"result": {"total": len(rows), "result": rows}}}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def deploy(cluster, namespace, operator, m: dict, dash: FakeDashboard) -> str:
    """Apply MoEDeployment ``m`` with ``dash`` as its Ray dashboard; its RayCluster's name once KubeRay made it (the
    stand-in then reports the RayService's applications, as Serve would)."""
    import yaml

    m["metadata"]["annotations"]["serving.moe-operator.io/ray-dashboard-url"] = dash.url
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(m))
    rc_name = wait_for("RayCluster", lambda: (get(cluster, "rayclusters", "-n", namespace) or {}).get("items"),
                       timeout=90, on_fail=operator.log_tail)[0]["metadata"]["name"]
    dash.apps = [a["name"] for a in yaml.safe_load(get(cluster, "rayservice", m["metadata"]["name"], "-n",
                                                       namespace)["spec"]["serveConfigV2"])["applications"]]
    return rc_name


def worker_group(cluster, namespace, rc_name) -> dict:
    """The RayCluster's (one) worker group as stored now ({} while it cannot be read)."""
    return (get(cluster, "rayclusters", rc_name, "-n", namespace) or {"spec": {"workerGroupSpecs": [{}]}})[
        "spec"]["workerGroupSpecs"][0]


def live_pods(cluster, namespace, rc_name) -> list[dict]:
    """The cpu group's worker pods that are not being deleted."""
    return [p for p in (get(cluster, "pods", "-n", namespace, "-l",
                            f"ray.io/cluster={rc_name},ray.io/group=cpu") or {"items": []})["items"]
            if not p["metadata"].get("deletionTimestamp")]


@pytest.mark.timing_sensitive
def test_scale_down_deletes_exactly_the_pod_that_holds_no_serve_replica(cluster, namespace, operator):
    exp = Exporter(0, model="m", pools={"cpu": 1}, ttft_s=TTFT_S, tpot_s=TPOT_S, exact_rates=True)
    dash = FakeDashboard()
    try:
        exp.load["generated"] = HIGH
        m = json.loads(manifest("sd", f"http://127.0.0.1:{exp.server.server_port}/metrics",
                                autoscaling={"scaleDownStabilizationSeconds": 10, "burstReserveSeconds": 0}))
        rc_name = deploy(cluster, namespace, operator, m, dash)

        def group():
            return worker_group(cluster, namespace, rc_name)

        def pods():
            return live_pods(cluster, namespace, rc_name)

        def record():
            return get(cluster, "rayservice", "sd", "-n", namespace)["spec"]["rayClusterConfig"][
                "workerGroupSpecs"][0]["replicas"]

        def serve_count():
            rs = get(cluster, "rayservice", "sd", "-n", namespace)
            return None if rs is None else "num_replicas: 1\n" in rs["spec"]["serveConfigV2"]

        two = wait_for("two worker pods with IPs", lambda: (lambda ps: ps if len(ps) == 2 and all(
            p["status"].get("podIP") for p in ps) else None)(pods()), timeout=120, on_fail=operator.log_tail)
        keep, drop = sorted(two, key=lambda p: p["metadata"]["name"])
        dash.busy = [keep["status"]["podIP"], drop["status"]["podIP"]]   # Serve still drains the stopping replica

        exp.load["generated"] = LOW
        wait_for("Serve's count lowered to 1", serve_count, timeout=120, on_fail=operator.log_tail)
        wait_for("a dashboard look after the scale-down", lambda: len(dash.paths) >= 6, timeout=60,
                 on_fail=operator.log_tail)
        assert group()["replicas"] == 2 and len(pods()) == 2, (group(), operator.log_tail())
        assert "workersToDelete" not in (group().get("scaleStrategy") or {})
        assert record() == 2   # the RayService's record of the group stays with the running cluster

        dash.busy = [keep["status"]["podIP"]]                           # drained: one pod holds nothing
        g = wait_for("the worker group lowered by the idle pod", lambda: (lambda x: x if x.get("replicas") == 1
                     else None)(group()), timeout=60, on_fail=operator.log_tail)
        assert g["scaleStrategy"]["workersToDelete"] == [drop["metadata"]["name"]], g
        wait_for("the RayService's record lowered with it", lambda: record() == 1, timeout=30,
                 on_fail=operator.log_tail)
        left = wait_for("KubeRay deleting exactly the named pod", lambda: (lambda ps: ps if len(ps) == 1 else None)(
            pods()), timeout=60, on_fail=operator.log_tail)
        assert left[0]["metadata"]["name"] == keep["metadata"]["name"], left
        events = [e for e in get(cluster, "events", "-n", namespace, "--field-selector", "involvedObject.name=sd")[
            "items"] if e["reason"] == "DrainedWorkers"]
        assert len(events) == 1 and drop["metadata"]["name"] in events[0]["message"], events
        assert {p.split("?")[0] for p in dash.paths} == {"/api/serve/applications/", "/api/v0/placement_groups",
                                                          "/api/v0/nodes"}
    finally:
        exp.close()
        dash.close()


@pytest.mark.timing_sensitive
def test_with_autoscaling_off_a_spec_replica_change_reaches_the_pods_and_a_decrease_drains(cluster, namespace,
                                                                                          operator):
    """KubeRay v1.5.0 does not pass a replicas-only RayService change on to the running RayCluster: the drift sweep
    raises the group to the spec's count, and lowers it only by pods the dashboard shows idle."""
    dash = FakeDashboard()
    try:
        m = json.loads(manifest("off", "http://127.0.0.1:9/metrics", pool={"replicas": 1},
                                autoscaling={"enabled": False}))
        rc_name = deploy(cluster, namespace, operator, m, dash)

        def group():
            return worker_group(cluster, namespace, rc_name)

        def pods():
            return live_pods(cluster, namespace, rc_name)

        m["spec"]["pools"][0]["replicas"] = 2
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(m))
        wait_for("the RayCluster's group raised to the spec's 2", lambda: group().get("replicas") == 2, timeout=60,
                 on_fail=operator.log_tail)
        two = wait_for("two worker pods with IPs", lambda: (lambda ps: ps if len(ps) == 2 and all(
            p["status"].get("podIP") for p in ps) else None)(pods()), timeout=120, on_fail=operator.log_tail)
        keep, drop = sorted(two, key=lambda p: p["metadata"]["name"])
        dash.busy = [keep["status"]["podIP"]]
        m["spec"]["pools"][0]["replicas"] = 1
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(m))
        g = wait_for("the group lowered by the idle pod", lambda: (lambda x: x if x.get("replicas") == 1 else None)(
            group()), timeout=60, on_fail=operator.log_tail)
        assert g["scaleStrategy"]["workersToDelete"] == [drop["metadata"]["name"]], g
        left = wait_for("KubeRay deleting exactly the named pod", lambda: (lambda ps: ps if len(ps) == 1 else None)(
            pods()), timeout=60, on_fail=operator.log_tail)
        assert left[0]["metadata"]["name"] == keep["metadata"]["name"], left
    finally:
        dash.close()
