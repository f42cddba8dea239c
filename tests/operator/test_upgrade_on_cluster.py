"""Budget-aware upgrades on the real control plane with KubeRay: a change that needs a new Ray cluster is held
under a tight maxHourlyCost (UpgradeBlockedByBudget, the RayService untouched, no second RayCluster), and goes
through once the budget allows it. Without a kubelet no Serve app comes up, so KubeRay never reports an active
cluster: the gate then counts the new cluster alone (nothing serves beside it); the surge of two is unit-tested
(test_upgrade_gate.py)."""
from __future__ import annotations

import copy
import json
import time

import pytest

from bad_specs import GOOD
from operator_harness import condition, get, wait_for

pytestmark = pytest.mark.cluster_logs("ray-operator", "kube-apiserver")


def spec(max_hourly: float, image: str | None = None) -> dict:
    s = copy.deepcopy(GOOD)
    s["pools"][0].update(pricePerDeviceHour=10.0, replicas=2, maxReplicas=4)
    if image:
        s["pools"][0]["image"] = image
    s["autoscaling"] = {"enabled": False, "budget": {"maxHourlyCost": max_hourly}}
    return s


def apply(cluster, namespace, name, s):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({
        "apiVersion": "serving.moe-operator.io/v1alpha1", "kind": "MoEDeployment", "metadata": {"name": name},
        "spec": s}))


def images(obj) -> set[str]:
    cfg = obj["spec"].get("rayClusterConfig", obj["spec"])
    groups = [cfg["headGroupSpec"], *cfg.get("workerGroupSpecs", [])]
    return {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}


def test_an_upgrade_whose_surge_breaks_the_budget_is_held_then_proceeds_when_it_fits(cluster, namespace, operator):
    name, new_image = "up", "registry.example/moe-runtime:next"
    apply(cluster, namespace, name, spec(15.0))                    # two $10/h replicas: a new cluster is $20/h
    rc = wait_for("the first RayCluster", lambda: (get(cluster, "rayclusters", "-n", namespace) or {}).get("items"),
                  on_fail=operator.log_tail)[0]
    old_images = images(rc)
    apply(cluster, namespace, name, spec(15.0, new_image))
    held = wait_for("Progressing=False UpgradeBlockedByBudget", lambda: (lambda c: c if c and c["reason"] ==
                    "UpgradeBlockedByBudget" else None)(condition(get(cluster, "moedeployment", name, "-n", namespace),
                                                                  "Progressing")), on_fail=operator.log_tail)
    assert held["status"] == "False"
    assert "the new cluster costs $20.00/h" in held["message"] and "maxHourlyCost $15/h" in held["message"], \
        held["message"]
    assert get(cluster, "moedeployment", name, "-n", namespace)["status"]["observedGeneration"] == 1   # not applied
    time.sleep(3)   # the operator's drift sweep runs every 3 s here: a late write would show now
    rs = get(cluster, "rayservice", name, "-n", namespace)
    assert new_image not in images(rs)
    clusters = get(cluster, "rayclusters", "-n", namespace)["items"]
    assert [c["metadata"]["name"] for c in clusters] == [rc["metadata"]["name"]] and images(clusters[0]) == old_images
    events = get(cluster, "events", "-n", namespace, "--field-selector", "reason=UpgradeBlockedByBudget")["items"]
    assert len(events) == 1, [e["message"] for e in events]         # said once, not on every sweep

    apply(cluster, namespace, name, spec(25.0, new_image))         # the new cluster now fits
    wait_for("the RayService with the new image",
             lambda: new_image in images(get(cluster, "rayservice", name, "-n", namespace)), on_fail=operator.log_tail)
    progressing = lambda: condition(get(cluster, "moedeployment", name, "-n", namespace), "Progressing") or {}  # noqa
    wait_for("Progressing to leave UpgradeBlockedByBudget",
             lambda: progressing().get("reason") != "UpgradeBlockedByBudget", on_fail=operator.log_tail)
    wait_for("KubeRay's RayCluster with the new image", lambda: any(
        new_image in images(c) for c in get(cluster, "rayclusters", "-n", namespace)["items"]), timeout=90,
        on_fail=operator.log_tail)
    wait_for("observedGeneration 3", lambda: get(cluster, "moedeployment", name, "-n", namespace)["status"].get(
        "observedGeneration") == 3, on_fail=operator.log_tail)
