"""Pure parts of the reconcile: what counts as drift, the repair, and status that only changes when the outcome does."""
from __future__ import annotations

import copy

from moe_operator.handlers import drift, status

DESIRED = {
    "metadata": {"name": "m", "labels": {"app.kubernetes.io/managed-by": "moe-operator"},
                 "ownerReferences": [{"uid": "u1", "kind": "MoEDeployment", "name": "m", "controller": True}]},
    "spec": {"serveConfigV2": "x", "rayClusterConfig": {"workerGroupSpecs": [{"groupName": "a", "replicas": 1}]}},
}


def live_from(desired):
    live = copy.deepcopy(desired)
    live["metadata"].update(resourceVersion="7", uid="rs")
    live["metadata"]["labels"]["extra"] = "kept"
    # fields the API server / KubeRay default are not ours and are not drift
    live["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["scaleStrategy"] = {}
    live["spec"]["rayClusterConfig"]["headGroupSpec"] = {"serviceType": "ClusterIP"}
    live["status"] = {"serviceStatus": "Running"}
    return live


def test_defaults_and_foreign_labels_are_not_drift():
    assert not drift.drifted(live_from(DESIRED), DESIRED)
    assert drift.repair(live_from(DESIRED), DESIRED) is False


def test_changed_owned_field_is_drift_and_repair_restores_it_keeping_foreign_fields():
    live = live_from(DESIRED)
    live["spec"]["serveConfigV2"] = "edited by hand"
    assert drift.drifted(live, DESIRED)
    assert drift.repair(live, DESIRED) is True
    assert live["spec"] == DESIRED["spec"] and live["metadata"]["labels"]["extra"] == "kept"
    assert live["metadata"]["resourceVersion"] == "7"      # optimistic concurrency keeps working
    assert not drift.drifted(live, DESIRED)


def test_lost_owner_reference_or_label_is_drift():
    live = live_from(DESIRED)
    live["metadata"]["ownerReferences"] = []
    assert drift.drifted(live, DESIRED)
    live = live_from(DESIRED)
    del live["metadata"]["labels"]["app.kubernetes.io/managed-by"]
    assert drift.drifted(live, DESIRED)


def test_live_replicas():
    assert drift.live_replicas(live_from(DESIRED)) == {"a": 1}
    assert drift.live_replicas(None) == {}


def test_conditions_keep_transition_time_while_unchanged():
    first = status.invalid_status({}, 3, "NoPrice", "set pricePerDeviceHour")
    again = status.invalid_status(first, 3, "NoPrice", "set pricePerDeviceHour")
    assert again == first and status.changed(first, again) == {}
    cond = {c["type"]: c for c in first["conditions"]}
    assert cond["SpecInvalid"]["status"] == "True" and cond["Ready"]["status"] == "False"
    assert cond["SpecInvalid"]["reason"] == "NoPrice" and cond["SpecInvalid"]["observedGeneration"] == 3
    later = status.invalid_status(first, 4, "NoPrice", "set pricePerDeviceHour")
    assert set(status.changed(first, later)) == {"observedGeneration", "conditions"}


def test_rayservice_ready_reads_kuberay_status():
    assert status.rayservice_ready(None)[0] is False
    assert status.rayservice_ready({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})[0] is True
    ok, why = status.rayservice_ready({"status": {"conditions": [{"type": "Ready", "status": "False",
                                                                  "reason": "Initializing", "message": "t=1"}]}})
    assert ok is False and "Initializing" in why and "t=1" not in why   # volatile messages stay out of our status


def test_autoscaler_sizes_are_not_drift_for_the_timer_but_are_for_a_spec_change():
    live = live_from(DESIRED)
    g = live["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    g.update(replicas=3, minReplicas=3, maxReplicas=4)     # what the actuator patches
    assert not drift.drifted(live, DESIRED, strict=False)
    assert drift.drifted(live, DESIRED, strict=True)
    live["spec"]["serveConfigV2"] = "y"
    assert drift.repair(live, DESIRED, strict=False) is True
    g = live["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert live["spec"]["serveConfigV2"] == "x" and (g["replicas"], g["minReplicas"], g["maxReplicas"]) == (3, 3, 4)


def test_serve_config_is_compared_as_data_not_text():
    want = copy.deepcopy(DESIRED)
    want["spec"]["serveConfigV2"] = "applications:\n- name: a\n  args: {x: 1}\n"
    live = live_from(want)
    live["spec"]["serveConfigV2"] = "applications:\n  - args:\n      x: 1\n    name: a\n"
    assert not drift.drifted(live, want)
    live["spec"]["serveConfigV2"] = "applications:\n  - args:\n      x: 2\n    name: a\n"
    assert drift.drifted(live, want)


def _rendered_example():
    from pathlib import Path

    from moe_operator.api import load_manifest
    from moe_operator.catalog import Catalog
    from moe_operator.render import Images
    from moe_operator.render.pipeline import plan_and_render

    m = load_manifest(Path(__file__).resolve().parents[2] / "examples" / "qwen3-moe-mixed.yaml")
    return plan_and_render(m.metadata.name, "default", m.spec, Catalog.default(), Images()).rayservice


def _containers(rs):
    cfg = rs["spec"]["rayClusterConfig"]
    for group in [cfg["headGroupSpec"], *cfg["workerGroupSpecs"]]:
        yield from group["template"]["spec"]["containers"]


def test_an_operator_upgrade_that_adds_a_security_context_rolls_no_cluster_until_the_spec_changes():
    """A pod-template change makes KubeRay bring up a whole second cluster (upgradeStrategy NewCluster): the
    securityContext a newer operator renders must not roll every deployment at once on its first sweep (review of
    issue 14 item 16). It is applied with the next spec change (strict), and a sweep's repair of another field keeps
    the live pods' securityContext."""
    desired = _rendered_example()
    live = copy.deepcopy(desired)
    for c in _containers(live):
        c.pop("securityContext")
    assert not drift.drifted(live, desired, strict=False)
    assert drift.drifted(live, desired, strict=True)
    live["spec"]["serveConfigV2"] = "applications: []"          # real drift elsewhere: repaired
    assert drift.repair(live, desired, strict=False)
    assert live["spec"]["serveConfigV2"] == desired["spec"]["serveConfigV2"]
    assert all("securityContext" not in c for c in _containers(live))
    assert drift.repair(live, desired, strict=True)
    assert all(c.get("securityContext") for c in _containers(live))


def _pods(rs):
    cfg = rs["spec"]["rayClusterConfig"]
    return [g["template"]["spec"] for g in cfg["workerGroupSpecs"]]


def test_an_operator_upgrade_that_adds_a_termination_grace_period_rolls_no_cluster_until_the_spec_changes():
    """The workers' terminationGracePeriodSeconds (issue 13: longer than any Serve drain) is in the pod template, so
    it goes the securityContext's way: a sweep after the upgrade neither counts it as drift nor writes it (nor drops
    the live value), and the next spec change applies it; the upgrade gate sees no upgrade in the sweep's write."""
    from moe_operator.handlers import upgrade

    desired = _rendered_example()
    grace = {p["terminationGracePeriodSeconds"] for p in _pods(desired)}
    assert len(grace) == 1 and grace.pop() >= 3600
    live = copy.deepcopy(desired)
    for p in _pods(live):
        p.pop("terminationGracePeriodSeconds")
    assert not drift.drifted(live, desired, strict=False)
    assert drift.drifted(live, desired, strict=True)
    assert not drift.repair(copy.deepcopy(live), desired, strict=False)          # nothing the sweep would write
    live["spec"]["serveConfigV2"] = "applications: []"          # real drift elsewhere: repaired, the pods left alone
    before = copy.deepcopy(live["spec"])
    assert drift.repair(live, desired, strict=False)
    assert live["spec"]["serveConfigV2"] == desired["spec"]["serveConfigV2"]
    assert not upgrade.needs_new_cluster(before, live["spec"])                 # KubeRay keeps the cluster
    assert upgrade.needs_new_cluster(before, desired["spec"])                  # the full render would not
    assert all("terminationGracePeriodSeconds" not in p for p in _pods(live))
    kept = copy.deepcopy(live)
    _pods(kept)[0]["terminationGracePeriodSeconds"] = 45        # a live value is kept by a sweep, not reverted
    kept["spec"]["serveConfigV2"] = "applications: []"
    assert drift.repair(kept, desired, strict=False) and _pods(kept)[0]["terminationGracePeriodSeconds"] == 45
    assert drift.repair(live, desired, strict=True)
    assert [p["terminationGracePeriodSeconds"] for p in _pods(live)] == \
        [p["terminationGracePeriodSeconds"] for p in _pods(desired)]
