"""The operator's scale-down path without a cluster (handlers/autoscale.py ``remove_drained``): the RayCluster keeps
its pods until the dashboard shows them idle, then loses exactly those, by name; an unreadable dashboard holds them
for the drain bound only, then the group is lowered without names and a Warning says so."""
from __future__ import annotations

import copy

import pytest

from moe_operator.autoscaling import actuator
from moe_operator.autoscaling.scale_down import RayView
from moe_operator.handlers import autoscale, kube, ray_dashboard

SERVE = ("applications:\n- name: app\n  deployments:\n  - name: engine-cpu\n    num_replicas: 1\n"
         "    graceful_shutdown_timeout_s: 100\n")


class Fake:
    def __init__(self, monkeypatch, busy: set[str] | None):
        self.rc = {"metadata": {"name": "rc-1"}, "spec": {"workerGroupSpecs": [
            {"groupName": "cpu", "replicas": 3, "minReplicas": 3, "maxReplicas": 3, "numOfHosts": 1}]}}
        self.pods = [{"metadata": {"name": f"w-{c}", "labels": {"ray.io/group": "cpu"}},
                      "status": {"podIP": f"10.0.0.{i}", "conditions": [{"type": "Ready", "status": "True"}]}}
                     for i, c in enumerate("abc")]
        self.busy, self.events, self.writes = busy, [], 0
        self.rs = {"spec": {"serveConfigV2": SERVE, "rayClusterConfig": {"workerGroupSpecs": [
            {"groupName": "cpu", "replicas": 3, "minReplicas": 3, "maxReplicas": 3}]}}}
        monkeypatch.setattr(kube, "ray_worker_pods", lambda ns, name: copy.deepcopy(self.pods))
        monkeypatch.setattr(kube, "replace_raycluster_with_retry", self.replace)
        monkeypatch.setattr(kube, "replace_with_retry", lambda ns, name, mutate: mutate(self.rs))
        monkeypatch.setattr(kube, "post_event", lambda body, t, reason, msg: self.events.append((reason, msg)))
        monkeypatch.setattr(ray_dashboard, "look", self.look)

    def look(self, url, apps=()):
        assert url == "http://rc-1-head-svc.ns.svc:8265" and apps == ("app",)
        if self.busy is None:
            raise ray_dashboard.DashboardError("Ray dashboard unreachable: ConnectError")
        return RayView(frozenset(self.busy))

    def replace(self, ns, name, mutate):
        cur = copy.deepcopy(self.rc)
        if not mutate(cur):
            return False
        self.rc, self.writes = cur, self.writes + 1
        return True

    def group(self):
        return self.rc["spec"]["workerGroupSpecs"][0]

    def record(self):
        return self.rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]


BODY = {"metadata": {"namespace": "ns", "name": "m", "annotations": {}}}
RS = {"spec": {"serveConfigV2": SERVE}}


def test_scale_down_keeps_busy_pods_then_names_the_idle_ones(monkeypatch):
    f = Fake(monkeypatch, {"10.0.0.0", "10.0.0.1", "10.0.0.2"})   # Serve still drains two of three
    state = autoscale.State()
    autoscale.remove_drained(BODY, state, RS, f.rc, {"cpu": 1}, now=0.0)
    assert f.group()["replicas"] == 3 and f.writes == 0 and not f.events
    f.busy = {"10.0.0.1"}                                           # drained: w-b keeps the remaining replica
    autoscale.remove_drained(BODY, state, RS, f.rc, {"cpu": 1}, now=10.0)
    assert f.group()["replicas"] == 1 and f.group()["minReplicas"] == 1
    assert f.group()["scaleStrategy"]["workersToDelete"] == ["w-a", "w-c"]
    assert f.record()["replicas"] == 1   # the RayService's record follows the cluster, not ahead of it
    assert [r for r, _ in f.events] == ["DrainedWorkers"] and "w-a, w-c" in f.events[0][1]
    autoscale.remove_drained(BODY, state, RS, f.rc, {"cpu": 1}, now=20.0)   # nothing left to remove: no write
    assert f.writes == 1 and state.drain_since == {}


def test_an_unreadable_dashboard_holds_the_pods_for_the_drain_bound_then_lowers_without_names(monkeypatch):
    f = Fake(monkeypatch, {"10.0.0.0", "10.0.0.1", "10.0.0.2"})
    state = autoscale.State()
    bound = 100 + autoscale.DRAIN_MARGIN_S                          # the rendered graceful_shutdown_timeout_s + margin
    autoscale.remove_drained(BODY, state, RS, f.rc, {"cpu": 1}, now=0.0)       # readable: all three busy
    f.busy = None
    autoscale.remove_drained(BODY, state, RS, f.rc, {"cpu": 1}, now=bound)     # the bound counts from this failure
    autoscale.remove_drained(BODY, state, RS, f.rc, {"cpu": 1}, now=2 * bound - 1)
    assert f.group()["replicas"] == 3 and f.writes == 0
    autoscale.remove_drained(BODY, state, RS, f.rc, {"cpu": 1}, now=2 * bound)
    assert f.group()["replicas"] == 1 and "scaleStrategy" not in f.group()
    assert [r for r, _ in f.events] == ["ScaleDownUnverified"] and "unreadable" in f.events[0][1]


def test_one_good_look_restarts_the_unreadable_clock(monkeypatch):
    f = Fake(monkeypatch, None)
    state = autoscale.State()
    bound = 100 + autoscale.DRAIN_MARGIN_S
    autoscale.remove_drained(BODY, state, RS, f.rc, {"cpu": 1}, now=0.0)
    f.busy = {"10.0.0.0", "10.0.0.1", "10.0.0.2"}
    autoscale.remove_drained(BODY, state, RS, f.rc, {"cpu": 1}, now=bound - 1)
    f.busy = None
    autoscale.remove_drained(BODY, state, RS, f.rc, {"cpu": 1}, now=bound + 10)
    assert f.group()["replicas"] == 3 and f.writes == 0


def test_pods_still_busy_past_the_bound_are_kept_and_a_warning_says_so_once(monkeypatch):
    f = Fake(monkeypatch, {"10.0.0.0", "10.0.0.1", "10.0.0.2"})
    state = autoscale.State()
    for t in (0.0, 200.0, 300.0):
        autoscale.remove_drained(BODY, state, RS, f.rc, {"cpu": 1}, now=t)
    assert f.group()["replicas"] == 3 and f.writes == 0
    assert [r for r, _ in f.events] == ["ScaleDownWaiting"]


def test_a_group_resized_since_the_read_is_not_overwritten(monkeypatch):
    f = Fake(monkeypatch, set())
    stale = copy.deepcopy(f.rc)
    f.rc["spec"]["workerGroupSpecs"][0]["replicas"] = 4              # someone raised it after our read
    autoscale.remove_drained(BODY, autoscale.State(), RS, stale, {"cpu": 1}, now=0.0)
    assert f.group()["replicas"] == 4 and f.writes == 0


@pytest.mark.parametrize("before, desired, after", [(1, 3, 3), (3, 1, 3), (3, 2, 3)])
def test_the_tick_only_ever_raises_a_group(before, desired, after):
    rc = {"spec": {"workerGroupSpecs": [{"groupName": "cpu", "replicas": before, "minReplicas": before,
                                         "maxReplicas": 3}]}}
    actuator.raycluster_grow(rc, {"cpu": desired})
    assert rc["spec"]["workerGroupSpecs"][0]["replicas"] == after


def test_drain_bound_reads_the_rendered_graceful_timeout():
    assert actuator.drain_bound_s(RS, "cpu", 3600) == 100
    assert actuator.drain_bound_s(RS, "gpu", 3600) == 3600
    assert actuator.drain_bound_s({"spec": {"serveConfigV2": ": not yaml ["}}, "cpu", 7) == 7


def test_a_pool_going_to_zero_drains_to_one_then_loses_its_last_pods_only_when_it_serves_nothing(monkeypatch):
    """At zero Serve keeps one replica (it cannot be refused 0), which never drains: the others drain first, then
    the last pod goes once a fresh observation shows the pool serving nothing."""
    f = Fake(monkeypatch, {"10.0.0.0", "10.0.0.1", "10.0.0.2"})
    state = autoscale.State()
    autoscale.remove_drained(BODY, state, RS, f.rc, {"cpu": 0}, now=0.0, idle={"cpu"})
    assert f.group()["replicas"] == 3 and f.writes == 0
    f.busy = {"10.0.0.2"}                                        # two drained; Serve's last replica on w-c
    autoscale.remove_drained(BODY, state, RS, f.rc, {"cpu": 0}, now=10.0, idle=set())   # traffic, or no metrics
    assert f.group()["replicas"] == 1 and f.group()["scaleStrategy"]["workersToDelete"] == ["w-a", "w-b"]
    f.pods = [p for p in f.pods if p["metadata"]["name"] == "w-c"]
    autoscale.remove_drained(BODY, state, RS, f.rc, {"cpu": 0}, now=20.0, idle={"cpu"})
    assert f.group()["replicas"] == 0 and f.group()["scaleStrategy"]["workersToDelete"] == ["w-c"]


def test_idle_pools_need_fresh_metrics_with_no_tokens_and_no_queue():
    from moe_operator.autoscaling.observation import Observation

    obs = Observation(observed_at=0.0, queue_depth=0.0,
                      served_by_pool={"cpu": {"generated": 0.0, "prompt": 0.0}, "gpu": {"generated": 3.0}})
    assert autoscale.idle_pools(obs, ["cpu", "gpu"]) == {"cpu"}
    assert autoscale.idle_pools(None, ["cpu"]) == set()
    busy_queue = Observation(observed_at=0.0, queue_depth=2.0, served_by_pool={"cpu": {}})
    assert autoscale.idle_pools(busy_queue, ["cpu"]) == set()


def test_a_scale_up_clears_the_names_of_an_earlier_removal_and_the_record_never_drops_below_the_cluster():
    rc = {"spec": {"workerGroupSpecs": [{"groupName": "cpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 3,
                                         "scaleStrategy": {"workersToDelete": ["w-a"]}}]}}
    assert actuator.raycluster_grow(rc, {"cpu": 2})
    assert rc["spec"]["workerGroupSpecs"][0]["scaleStrategy"]["workersToDelete"] == []
    rs = {"spec": {"serveConfigV2": SERVE, "rayClusterConfig": {"workerGroupSpecs": [
        {"groupName": "cpu", "replicas": 3, "minReplicas": 3, "maxReplicas": 3}]}}}
    patch = actuator.rayservice_patch(rs, {"cpu": 2}, group_floor={"cpu": 3})   # pods still draining
    assert "num_replicas: 2" in patch["spec"]["serveConfigV2"] and "rayClusterConfig" not in patch["spec"]
    assert actuator.rayservice_patch(rs, {"cpu": 2})["spec"]["rayClusterConfig"]["workerGroupSpecs"][0][
        "replicas"] == 2   # without the floor the record would drop below the running cluster


def test_a_reconcile_during_a_drain_renders_serves_count_not_the_groups():
    """The record of a draining group stays above Serve's count; a re-render from it would raise Serve back and
    fight the autoscaler (seen on the real control plane before live_replicas read Serve's count)."""
    from moe_operator.handlers import drift

    rs = {"spec": {"serveConfigV2": SERVE, "rayClusterConfig": {"workerGroupSpecs": [
        {"groupName": "cpu", "replicas": 3, "minReplicas": 3, "maxReplicas": 3}]}}}
    assert drift.live_replicas(rs) == {"cpu": 1}


def test_with_autoscaling_off_the_pods_follow_serves_count_up_at_once_and_down_drained(monkeypatch):
    """KubeRay does not pass a replicas-only RayService change to the running cluster: before follow_serve a spec's
    new replicas reached Serve and never the pods (autoscaling off: nothing patched the RayCluster)."""
    f = Fake(monkeypatch, set())
    body = {"metadata": {"namespace": "ns", "name": "m", "uid": "u", "annotations": {}},
            "spec": {"autoscaling": {"enabled": False}}}
    monkeypatch.setattr(kube, "get_rayservice", lambda ns, name: copy.deepcopy(f.rs))
    monkeypatch.setattr(kube, "owned_by", lambda obj, uid: True)
    monkeypatch.setattr(kube, "active_raycluster", lambda ns, rs: copy.deepcopy(f.rc))
    monkeypatch.setattr(autoscale, "STATES", {})
    f.rc["spec"]["workerGroupSpecs"][0].update(replicas=1, minReplicas=1)
    f.rs["spec"]["serveConfigV2"] = SERVE.replace("num_replicas: 1", "num_replicas: 3")
    autoscale.follow_serve(body, now=0.0)                       # the spec went 1 -> 3: the pods follow at once
    assert f.group()["replicas"] == 3 and f.events == []
    f.rs["spec"]["serveConfigV2"] = SERVE                        # and back to 1: only idle pods go
    f.busy = {"10.0.0.0"}
    autoscale.follow_serve(body, now=30.0)
    assert f.group()["replicas"] == 1 and f.group()["scaleStrategy"]["workersToDelete"] == ["w-b", "w-c"]


def test_the_drift_sweep_moves_pods_only_for_deployments_the_autoscaler_does_not_scale(monkeypatch):
    from moe_operator.handlers import drift_sweep

    followed = []
    monkeypatch.setattr(drift_sweep, "reconcile", lambda b, strict: None)
    monkeypatch.setattr(drift_sweep, "apply_outcome", lambda b, o: None)
    monkeypatch.setattr(autoscale, "follow_serve", lambda b, now: followed.append(b["metadata"]["name"]))
    for name, spec in (("off", {"autoscaling": {"enabled": False}}), ("on", {"autoscaling": {"enabled": True}}),
                       ("default", {})):
        drift_sweep.tick({"metadata": {"namespace": "ns", "name": name}, "spec": spec}, 0.0)
    assert followed == ["off"]


def test_with_autoscaling_off_a_rerender_keeps_the_specs_replicas_not_the_live_ones():
    """Before: the live count always won, so with autoscaling off a spec's new replicas changed nothing at all."""
    from moe_operator.api import MoEDeploymentSpec
    from moe_operator.handlers.reconcile import kept_replicas

    live = {"spec": {"serveConfigV2": SERVE, "rayClusterConfig": {"workerGroupSpecs": [
        {"groupName": "cpu", "replicas": 1}]}}}
    base = {"model": {"source": "builtin://tiny-moe", "architecture": "tiny"}, "engine": "torch",
            "pools": [{"name": "cpu", "accelerator": "cpu", "devicesPerReplica": 1, "maxReplicas": 3, "replicas": 2}]}
    on = MoEDeploymentSpec.model_validate(base)
    off = MoEDeploymentSpec.model_validate({**base, "autoscaling": {"enabled": False}})
    assert kept_replicas(on, live) == {"cpu": 1} and kept_replicas(off, live) == {}
