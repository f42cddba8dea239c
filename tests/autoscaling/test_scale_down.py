"""Which worker pods a scale-down may delete (autoscaling/scale_down.py): only pods that hold no Serve replica and no
placement-group bundle, in whole replicas; nothing while a replica is unplaced. The dashboard answers are Ray 2.60's
own (tests/autoscaling/data/ray260_*.json: a local Ray with its dashboard, apps ``a`` (2 replicas) and ``b`` (1
replica with a 2-bundle placement group), read with GET on the three paths handlers/ray_dashboard.py uses)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from moe_operator.autoscaling.scale_down import RayView, ray_view, removal

DATA = Path(__file__).parent / "data"


def answers():
    return [json.loads((DATA / f"ray260_{n}.json").read_text())
            for n in ("api_serve_applications", "api_v0_placement_groups", "api_v0_nodes")]


def set_rows(answer: dict, rows: list) -> None:
    """Replace a state API answer's rows, with Ray's counters (total, after truncation, filtered) to match."""
    got = answer["data"]["result"]
    got["result"] = rows
    got["total"] = got["num_after_truncation"] = got["num_filtered"] = len(rows)


def pod(name: str, ip: str | None, ready: bool = True, terminating: bool = False, group: str = "cpu") -> dict:
    meta = {"name": name, "labels": {"ray.io/group": group}}
    if terminating:
        meta["deletionTimestamp"] = "2026-12-07T00:00:00Z"
    status = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": meta, "status": status}


def test_real_ray_answers_give_the_replica_node_as_busy():
    view = ray_view(*answers())
    assert view == RayView(frozenset({"192.0.2.2"}), frozenset(), {"192.0.2.2": frozenset({"a/A", "b/B"})})


def test_a_placement_group_bundle_makes_its_node_busy_even_without_a_replica_there():
    serve, pgs, nodes = answers()
    for app in serve["applications"].values():
        for dep in app["deployments"].values():
            dep["replicas"] = []
    set_rows(nodes, nodes["data"]["result"]["result"] + [{"node_id": "n2", "node_ip": "10.0.0.2"}])
    pgs["data"]["result"]["result"][0]["bundles"][1]["node_id"] = "n2"
    assert ray_view(serve, pgs, nodes).busy_ips == {"192.0.2.2", "10.0.0.2"}


def test_unplaced_replicas_and_pending_bundles_are_counted():
    serve, pgs, nodes = answers()
    rep = serve["applications"]["a"]["deployments"]["A"]["replicas"][0]
    rep["node_ip"] = rep["node_id"] = None
    rep["state"] = "STARTING"
    pgs["data"]["result"]["result"][0]["state"] = "PENDING"
    pgs["data"]["result"]["result"][0]["bundles"][0]["node_id"] = None
    assert ray_view(serve, pgs, nodes).unplaced == {"a/A", "b/B"}   # b's replica group: named after its replica


@pytest.mark.parametrize("breakage", ["no_apps", "state_failed", "truncated", "limited", "partial", "unknown_node",
                                      "not_a_list"])
def test_answers_not_shaped_like_ray_260_raise(breakage):
    serve, pgs, nodes = answers()
    if breakage == "no_apps":
        serve = {"applications": None}
    elif breakage == "state_failed":
        pgs["result"] = False
    elif breakage == "truncated":       # the data source's own cap
        nodes["data"]["result"]["total"] = 5000
    elif breakage == "limited":         # more matched than the limit returned
        pgs["data"]["result"]["num_filtered"] = 3
    elif breakage == "partial":
        nodes["data"]["result"]["partial_failure_warning"] = "a raylet did not answer"
    elif breakage == "unknown_node":
        pgs["data"]["result"]["result"][0]["bundles"][0]["node_id"] = "nowhere"
    else:
        nodes["data"]["result"]["result"] = "x"
    with pytest.raises(ValueError):
        ray_view(serve, pgs, nodes)


def test_removal_names_only_idle_pods_and_lowers_by_as_many():
    pods = [pod("w-a", "10.0.0.1"), pod("w-b", "10.0.0.2"), pod("w-c", "10.0.0.3")]
    r = removal(3, 1, 1, pods, RayView(frozenset({"10.0.0.2"})))
    assert (r.replicas, r.pods, r.waiting) == (1, ("w-a", "w-c"), "")


def test_removal_waits_for_pods_still_draining():
    pods = [pod("w-a", "10.0.0.1"), pod("w-b", "10.0.0.2"), pod("w-c", "10.0.0.3")]
    r = removal(3, 1, 1, pods, RayView(frozenset({"10.0.0.1", "10.0.0.2"})))
    assert (r.replicas, r.pods) == (2, ("w-c",)) and "1 replica(s) still draining" in r.waiting
    r = removal(3, 1, 1, pods, RayView(frozenset({"10.0.0.1", "10.0.0.2", "10.0.0.3"})))
    assert (r.replicas, r.pods) == (3, ()) and r.waiting


def test_removal_takes_whole_multi_host_replicas():
    pods = [pod(f"w-{i}", f"10.0.0.{i}") for i in range(6)]           # 3 replicas of 2 hosts
    r = removal(3, 2, 1, pods, RayView(frozenset({"10.0.0.0", "10.0.0.3"})))   # one replica's two hosts
    assert (r.replicas, r.pods) == (1, ("w-1", "w-2", "w-4", "w-5"))
    r = removal(3, 2, 1, pods, RayView(frozenset({"10.0.0.0", "10.0.0.2", "10.0.0.4"})))   # 3 idle: one replica
    assert (r.replicas, len(r.pods)) == (2, 2) and r.waiting


def test_nothing_goes_while_a_replica_of_a_deployment_running_here_is_unplaced_and_nothing_without_excess():
    pods = [pod("w-a", "10.0.0.1"), pod("w-b", "10.0.0.2"), pod("w-c", "10.0.0.3")]
    busy = frozenset({"10.0.0.1"})
    pending_here = RayView(busy, frozenset({"app/engine-cpu"}), {"10.0.0.1": frozenset({"app/engine-cpu"})})
    r = removal(3, 1, 1, pods, pending_here)
    assert r.pods == () and "app/engine-cpu is not placed" in r.waiting
    # a pool parked at zero elsewhere keeps one Serve replica unplaced for ever: it must not block this pool
    parked_elsewhere = RayView(busy, frozenset({"app/engine-gpu"}), {"10.0.0.1": frozenset({"app/engine-cpu"})})
    assert removal(3, 1, 1, pods, parked_elsewhere).pods == ("w-b", "w-c")
    assert removal(2, 1, 2, pods, RayView(frozenset())) == removal(2, 1, 3, pods, RayView(frozenset()))
    assert removal(2, 1, 2, pods, RayView(frozenset())).pods == ()


def test_unready_and_unscheduled_pods_go_first_and_terminating_ones_are_not_named():
    pods = [pod("w-a", "10.0.0.1"), pod("w-b", None, ready=False), pod("w-c", "10.0.0.3", terminating=True),
            pod("w-d", "10.0.0.4", ready=False)]
    r = removal(4, 1, 2, copy.deepcopy(pods), RayView(frozenset()))
    assert r.pods == ("w-b", "w-d")


def test_a_proxy_still_draining_keeps_its_node_busy_until_serve_removes_it():
    """Streams that entered through a node's proxy end there, whatever replica serves them (Serve drains the proxy
    of a node left without replicas, then removes it)."""
    serve, pgs, nodes = answers()
    for app in serve["applications"].values():
        for dep in app["deployments"].values():
            dep["replicas"] = []
    set_rows(pgs, [])
    (proxy,) = serve["proxies"].values()
    proxy["status"] = "DRAINING"
    assert ray_view(serve, pgs, nodes).busy_ips == {"192.0.2.2"}
    proxy["status"] = "DRAINED"
    assert ray_view(serve, pgs, nodes).busy_ips == set()


def test_a_serve_controller_down_or_an_app_not_reported_is_no_view():
    """Serve answers ``applications: {}`` while its controller restarts: every pod would look idle."""
    serve, pgs, nodes = answers()
    with pytest.raises(ValueError, match="application"):
        ray_view(serve, pgs, nodes, apps=["a", "b", "tiny"])
    serve["controller_info"] = {}
    with pytest.raises(ValueError, match="controller is not running"):
        ray_view(serve, pgs, nodes)


def test_a_replica_recovering_on_an_unknown_node_blocks_every_removal():
    serve, pgs, nodes = answers()
    rep = serve["applications"]["a"]["deployments"]["A"]["replicas"][0]
    rep["node_ip"] = rep["node_id"] = None
    rep["state"] = "RECOVERING"
    view = ray_view(serve, pgs, nodes)
    assert "RECOVERING" in view.blocked
    r = removal(2, 1, 1, [pod("w-a", "10.0.0.1"), pod("w-b", "10.0.0.2")], view)
    assert r.pods == () and "RECOVERING" in r.waiting


def test_kuberay_replica_groups_go_whole_or_not_at_all():
    """With KubeRay's RayMultiHostIndexing, naming one pod deletes its whole replica group."""
    pods = [pod(f"w-{i}", f"10.0.0.{i}") for i in range(6)]
    for i, p in enumerate(pods):
        p["metadata"]["labels"]["ray.io/worker-group-replica-name"] = f"g{i // 2}"
    # g0 = w-0, w-1 busy on w-0; g1 = w-2, w-3 idle; g2 = w-4, w-5 busy on w-5
    r = removal(3, 2, 1, pods, RayView(frozenset({"10.0.0.0", "10.0.0.5"})))
    assert (r.replicas, r.pods) == (2, ("w-2", "w-3")) and r.waiting


def test_names_from_the_dashboard_reach_a_message_only_as_name_characters():
    """The answer comes from the tenant's own Ray; the waiting reason goes into an Event."""
    serve, pgs, nodes = answers()
    serve["applications"]["a\nFAKE: line<script>"] = serve["applications"].pop("a")
    rep = serve["applications"]["a\nFAKE: line<script>"]["deployments"]["A"]["replicas"][0]
    rep["node_ip"] = rep["node_id"] = None
    rep["state"] = "RECOVERING; rm -rf /"
    view = ray_view(serve, pgs, nodes)
    assert "\n" not in view.blocked and "<" not in view.blocked and "rm -rf" not in view.blocked
    assert "unknown state" in view.blocked
