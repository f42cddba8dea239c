"""Wake from zero on the real control plane (issue 12, the operator path): a MoEDeployment with scaleToZero at zero
replicas, whose router exports ``moe_router_waiting_requests{model, pool=""}`` (the runtime cannot run here: its
/metrics is served in-test over loopback, the only series a router at zero has). While nobody waits the operator
keeps the pool at zero; once 2 requests wait it scales the RayService (Serve ``engine-cpu`` num_replicas and the
worker group) and the running RayCluster from 0 to 1, and kwok's worker pod follows.

Waits are on events (the operator's decision log lines, the RayService, the RayCluster), never a fixed sleep."""
from __future__ import annotations

import time

import pytest

from exporter import RouterAtZero
from moe_operator.autoscaling.actuator import serve_replicas
from operator_harness import get, wait_for
from test_autoscale_on_cluster import TICK_S, decisions, log_lines
from test_autoscale_on_cluster import manifest as autoscale_manifest

pytestmark = pytest.mark.cluster_logs("ray-operator", "kube-apiserver")


def manifest(name: str, url: str) -> str:
    """The autoscale test's deployment, starting at zero with scale to zero on."""
    return autoscale_manifest(name, url, {"minReplicas": 0, "replicas": 0, "maxReplicas": 2},
                              {"targetUtilization": None, "scaleToZero": {"enabled": True, "idleSeconds": 600}})


@pytest.mark.timing_sensitive
def test_requests_waiting_in_the_router_wake_a_deployment_at_zero(cluster, namespace, operator):
    router = RouterAtZero(model="m", waiting={"": 0})
    try:
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("wake", router.url))

        def rs():
            return get(cluster, "rayservice", "wake", "-n", namespace)

        def group(obj) -> int:   # the worker group's replicas, of a RayService or a RayCluster
            spec = obj["spec"].get("rayClusterConfig", obj["spec"])
            return spec["workerGroupSpecs"][0]["replicas"]

        live = wait_for("RayService", rs, timeout=90, on_fail=operator.log_tail)
        assert group(live) == 0 and serve_replicas(live) == {"cpu": 0}, live["spec"]
        rc_name = wait_for("RayCluster", lambda: (get(cluster, "rayclusters", "-n", namespace) or {}).get("items"),
                           timeout=90)[0]["metadata"]["name"]
        assert group(get(cluster, "rayclusters", rc_name, "-n", namespace)) == 0

        # Nobody waiting: two ticks (the first scrape only primes the rates) decide the pool stays at zero.
        def ticks():
            return decisions(log_lines(operator), namespace, "wake", "cpu")

        at_zero = wait_for("two decisions at zero while nobody waits", lambda: (lambda ds: ds if len(ds) >= 2
                           else None)(ticks()), timeout=60, on_fail=operator.log_tail)
        assert all(d.replicas == 0 for d in at_zero), at_zero
        assert serve_replicas(rs()) == {"cpu": 0}

        router.set_waiting({"": 2})           # two requests wait for any pool
        woken_at = time.monotonic()
        live = wait_for("the RayService scaled from zero", lambda: (lambda r: r if r is not None and group(r) >= 1
                        else None)(rs()), timeout=60, on_fail=operator.log_tail)
        took = time.monotonic() - woken_at
        print(f"\nwake from zero: RayService scaled {took:.1f} s after the router reported 2 waiting "
              f"(intervalSeconds {TICK_S})")
        assert group(live) == 1 and serve_replicas(live) == {"cpu": 1}, live["spec"]
        wait_for("the RayCluster's worker group at 1", lambda: group(get(cluster, "rayclusters", rc_name, "-n",
                 namespace)) == 1, timeout=60, on_fail=operator.log_tail)
        wait_for("a worker pod", lambda: [p for p in get(cluster, "pods", "-n", namespace, "-l",
                 f"ray.io/cluster={rc_name},ray.io/group=cpu")["items"] if not p["metadata"].get("deletionTimestamp")],
                 timeout=90)
        events = wait_for("a ScaledUp Event", lambda: [e for e in get(cluster, "events", "-n", namespace,
                          "--field-selector", "involvedObject.name=wake")["items"] if e["reason"] == "ScaledUp"],
                          timeout=60)
        assert len(events) == 1 and events[0]["message"].startswith("cpu=1: scale up to cpu=1"), events
        woke = [d for d in ticks() if d.replicas == 1]
        assert woke and woke[0].reason.startswith("scale up to cpu=1"), woke
        assert [c["metadata"]["name"] for c in get(cluster, "rayclusters", "-n", namespace)["items"]] == [rc_name]
    finally:
        router.close()
