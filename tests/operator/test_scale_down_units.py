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
        monkeypatch.setattr(kube, "ray_worker_pods", lambda ns, name: copy.deepcopy(self.pods))
        monkeypatch.setattr(kube, "replace_raycluster_with_retry", self.replace)
        monkeypatch.setattr(kube, "post_event", lambda body, t, reason, msg: self.events.append((reason, msg)))
        monkeypatch.setattr(ray_dashboard, "look", self.look)

    def look(self, url):
        assert url == "http://rc-1-head-svc.ns.svc:8265"
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
    assert [r for r, _ in f.events] == ["DrainedWorkers"] and "w-a, w-c" in f.events[0][1]
    autoscale.remove_drained(BODY, state, RS, f.rc, {"cpu": 1}, now=20.0)   # nothing left to remove: no write
    assert f.writes == 1 and state.drain_since == {}


def test_an_unreadable_dashboard_holds_the_pods_for_the_drain_bound_then_lowers_without_names(monkeypatch):
    f = Fake(monkeypatch, None)
    state = autoscale.State()
    bound = 100 + autoscale.DRAIN_MARGIN_S                          # the rendered graceful_shutdown_timeout_s + margin
    autoscale.remove_drained(BODY, state, RS, f.rc, {"cpu": 1}, now=0.0)
    autoscale.remove_drained(BODY, state, RS, f.rc, {"cpu": 1}, now=bound - 1)
    assert f.group()["replicas"] == 3 and f.writes == 0
    autoscale.remove_drained(BODY, state, RS, f.rc, {"cpu": 1}, now=bound)
    assert f.group()["replicas"] == 1 and "scaleStrategy" not in f.group()
    assert [r for r, _ in f.events] == ["ScaleDownUnverified"] and "unreadable" in f.events[0][1]


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


def test_a_pool_going_to_zero_drains_to_one_then_loses_its_last_pods(monkeypatch):
    """At zero Serve keeps one replica (it cannot be refused 0): the others drain first, then the last pod goes."""
    f = Fake(monkeypatch, {"10.0.0.0", "10.0.0.1", "10.0.0.2"})
    state = autoscale.State()
    autoscale.remove_drained(BODY, state, RS, f.rc, {"cpu": 0}, now=0.0)
    assert f.group()["replicas"] == 3 and f.writes == 0
    f.busy = {"10.0.0.2"}                                        # two drained; Serve's last replica on w-c
    autoscale.remove_drained(BODY, state, RS, f.rc, {"cpu": 0}, now=10.0)
    assert f.group()["replicas"] == 0 and f.group()["scaleStrategy"]["workersToDelete"] == ["w-a", "w-b", "w-c"]
