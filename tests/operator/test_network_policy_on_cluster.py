"""The NetworkPolicy of a MoEDeployment on a real API server (issue 14 item 14): made, left alone, repaired, refused.

The offline tests (test_network_policy_offline.py) fix the call order; this one shows that what the API server stores
compares equal to what we render (no write on every sweep), that a hand deletion is repaired by the sweep, and that
a stranger's policy of the same name stops the reconcile before any RayService. Enforcement needs a CNI, which the
test control plane does not run: what the policy admits is render/test_networkpolicy.py's.
"""
from __future__ import annotations

import json
import time

import pytest

from bad_specs import GOOD
from operator_harness import condition, get, wait_for

pytestmark = pytest.mark.cluster_logs("kube-apiserver")


def manifest(name: str) -> str:
    return json.dumps({"apiVersion": "serving.moe-operator.io/v1alpha1", "kind": "MoEDeployment",
                       "metadata": {"name": name}, "spec": GOOD})


def test_the_policy_is_made_owned_stays_unwritten_and_comes_back(cluster, namespace, operator):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("np"))
    policy = wait_for("the NetworkPolicy", lambda: get(cluster, "networkpolicy", "np", "-n", namespace),
                      on_fail=operator.log_tail)
    moed = get(cluster, "moed", "np", "-n", namespace)
    assert [r["uid"] for r in policy["metadata"]["ownerReferences"]] == [moed["metadata"]["uid"]]
    ports = {p["port"] for r in policy["spec"]["ingress"] for p in r.get("ports") or []}
    assert ports == {8265, 8000, 8080}
    wait_for("the RayService", lambda: get(cluster, "rayservice", "np", "-n", namespace), on_fail=operator.log_tail)
    version = policy["metadata"]["resourceVersion"]
    time.sleep(3 * operator.drift_interval + 1)   # three sweeps: the stored object equals the render, no write
    assert get(cluster, "networkpolicy", "np", "-n", namespace)["metadata"]["resourceVersion"] == version
    cluster.kubectl("delete", "networkpolicy", "np", "-n", namespace)
    back = wait_for("the sweep to recreate it", lambda: get(cluster, "networkpolicy", "np", "-n", namespace),
                    timeout=5 * operator.drift_interval + 10, on_fail=operator.log_tail)
    assert back["spec"] == policy["spec"]


def test_a_strangers_policy_is_left_alone_and_no_rayservice_is_made(cluster, namespace, operator):
    stranger = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "taken", "namespace": namespace},
                "spec": {"podSelector": {}, "ingress": [{}], "policyTypes": ["Ingress"]}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(stranger))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("taken"))
    ready = wait_for("Ready=False NetworkPolicyNotOwned", lambda: (lambda c: c if c and c.get("reason") ==
                     "NetworkPolicyNotOwned" else None)(condition(get(cluster, "moed", "taken", "-n", namespace),
                                                                  "Ready")), on_fail=operator.log_tail)
    assert ready["status"] == "False"
    assert get(cluster, "rayservice", "taken", "-n", namespace) is None
    live = get(cluster, "networkpolicy", "taken", "-n", namespace)
    assert not live["metadata"].get("ownerReferences") and live["spec"]["ingress"] == [{}]
