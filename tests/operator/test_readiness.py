"""Ready replicas per pool are counted from the worker pods that are Ready, not invented from the desired count
(issue 13 "Truthful status"): a killed pod, one still starting, one terminating, or one host of a multi-host
replica missing each lower the count; the RayService's status and the autoscaler read the same figure. The pod
watch (handlers/podwatch.py) refreshes that figure in status when a worker pod's readiness changes: which events
count, one refresh per burst, and a refresh that writes what a reconcile would."""
from __future__ import annotations

import asyncio
import threading
import time

from moe_operator.handlers import podwatch, status
from moe_operator.handlers.readiness import for_autoscaler, pod_ready, ready_by_group

RC = {"metadata": {"name": "rc-1"},
      "spec": {"workerGroupSpecs": [{"groupName": "h800", "replicas": 2, "numOfHosts": 2},
                                    {"groupName": "cpu", "replicas": 3}]}}


def pod(group: str, ready: bool = True, deleting: bool = False, cluster: str = "rc-1") -> dict:
    meta = {"labels": {"ray.io/group": group, "ray.io/cluster": cluster, "ray.io/node-type": "worker"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-07T00:00:00Z"
    return {"metadata": meta, "status": {"phase": "Running",
                                         "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_every_replica_ready():
    pods = [pod("h800")] * 4 + [pod("cpu")] * 3
    assert ready_by_group(RC, pods) == {"h800": 2, "cpu": 3}


def test_a_killed_a_starting_and_a_terminating_pod_each_count_against_their_pool():
    pods = [pod("h800")] * 3 + [pod("h800", ready=False)] + [pod("cpu"), pod("cpu", deleting=True)]
    assert ready_by_group(RC, pods) == {"h800": 1, "cpu": 1}       # 3 of 4 hosts: one whole 2-host replica


def test_pods_of_another_cluster_or_beyond_the_group_size_do_not_count():
    pods = [pod("cpu")] * 5 + [pod("cpu", cluster="rc-old")] * 3
    assert ready_by_group(RC, pods) == {"h800": 0, "cpu": 3}


# --- the pod watch (handlers/podwatch.py) and the status refresh it triggers (status.with_readiness) ---

def watched(uid: str, ready: bool = True, deleting: bool = False) -> dict:
    p = pod("cpu", ready=ready, deleting=deleting)
    p["metadata"].update(uid=uid, namespace="ns",
                         labels={**p["metadata"]["labels"], "serving.moe-operator.io/deployment": "m"})
    return p


def test_which_pod_events_change_readiness():
    t = podwatch.Transitions()
    assert not t.changed(None, watched("a"))                 # kopf's initial listing only records
    assert not t.changed("MODIFIED", watched("a"))           # still Ready: a status-only update, nothing to count
    assert t.changed("MODIFIED", watched("a", ready=False))  # Ready flipped to False
    assert t.changed("MODIFIED", watched("a"))               # and back
    assert t.changed("MODIFIED", watched("a", deleting=True))   # terminating no longer counts
    assert not t.changed("DELETED", watched("a", deleting=True))  # it did not count any more: gone changes nothing
    assert not t.changed("ADDED", watched("b", ready=False))  # a new pod matters once it is Ready
    assert t.changed("MODIFIED", watched("b"))
    assert t.changed("DELETED", watched("b"))                # a Ready pod vanishing at once (force delete)
    assert t.seen == {}                                       # deleted pods are forgotten
    assert t.changed("MODIFIED", watched("c"))               # first seen after a missed event: refresh to be sure
    assert podwatch.deployment_of(watched("c")) == ("ns", "m")
    assert podwatch.deployment_of(pod("cpu")) is None


def test_the_selector_matches_the_worker_pods_kuberay_makes_from_our_template_and_not_the_head():
    from moe_operator.catalog import Catalog
    from moe_operator.render import Images
    from moe_operator.render.pipeline import plan_and_render
    from bad_specs import GOOD

    rs = plan_and_render("m", "ns", GOOD, Catalog.default(), Images()).rayservice
    cfg = rs["spec"]["rayClusterConfig"]
    # KubeRay v1.5.0 labelPod(): these on every Ray pod, node-type/group/cluster not overridable by the template
    worker = {**cfg["workerGroupSpecs"][0]["template"]["metadata"]["labels"], "ray.io/node-type": "worker",
              "ray.io/group": "cpu", "ray.io/cluster": "m-raycluster-x", "ray.io/is-ray-node": "yes"}
    head = {**cfg["headGroupSpec"]["template"]["metadata"]["labels"], "ray.io/node-type": "head"}

    def matches(labels: dict) -> bool:
        for term in podwatch.SELECTOR.split(","):
            k, _, v = term.partition("=")
            if k not in labels or (v and labels[k] != v):
                return False
        return True
    assert matches(worker) and not matches(head)
    assert all(worker.get(k) == v for k, v in podwatch.LABELS.items() if isinstance(v, str))
    assert podwatch.deployment_of({"metadata": {"namespace": "ns", "labels": worker}}) == ("ns", "m")


def test_a_burst_of_pokes_is_one_run_per_deployment_and_poking_never_blocks():
    runs, release = [], threading.Event()

    def run(key):
        runs.append(key)
        release.wait(5)

    async def scenario():
        c = podwatch.Coalescer(run, settle_s=0.05)
        t0 = time.monotonic()
        started = [c.poke(("ns", "a")) for _ in range(50)] + [c.poke(("ns", "b"))]
        assert time.monotonic() - t0 < 0.05                  # nothing waited on the event loop
        assert started.count(True) == 2
        while len(runs) < 2:
            await asyncio.sleep(0.01)
        assert c.running == {("ns", "a"), ("ns", "b")}
        # changes while a run is in flight (it may have read the old pods): exactly one more run each
        assert [c.poke(("ns", "a")) for _ in range(10)] == [False] * 10
        release.set()
        while c.tasks:
            await asyncio.sleep(0.01)
    asyncio.run(scenario())
    assert sorted(runs) == [("ns", "a"), ("ns", "a"), ("ns", "b")]


def test_a_failing_refresh_is_logged_and_the_next_poke_runs_again():
    calls = []

    def run(key):
        calls.append(key)
        raise RuntimeError("API down")

    async def scenario():
        c = podwatch.Coalescer(run, settle_s=0.01)
        for _ in range(2):
            assert c.poke("k")
            while c.tasks:
                await asyncio.sleep(0.01)
    asyncio.run(scenario())
    assert calls == ["k", "k"]


def _reconciled(counted: dict[str, int] | None, kuberay_ready: bool = True, replicas: int = 2):
    """(status as the reconcile writes it, the live RayService) for GOOD at ``replicas``."""
    from moe_operator.catalog import Catalog
    from moe_operator.render.context import build_render_input
    from moe_operator.planning import plan_deployment
    from moe_operator.render.pipeline import parse_spec
    from moe_operator.render.images import Images
    from bad_specs import GOOD

    spec = parse_spec({**GOOD, "pools": [{**GOOD["pools"][0], "replicas": replicas}]})
    p = plan_deployment(spec, Catalog.default(), "m")
    r = build_render_input("m", "ns", spec, Catalog.default(), p, Images(), {})
    live = {"status": {"conditions": [{"type": "Ready", "status": "True" if kuberay_ready else "False",
                                       "reason": "x"}]}}
    return status.ok_status({}, 3, r, p, live, counted), live, (r, p)


def test_the_refresh_writes_what_a_reconcile_would():
    for before, after, kuberay in (({"cpu": 2}, {"cpu": 1}, True), ({"cpu": 2}, {"cpu": 0}, True),
                                   ({"cpu": 0}, {"cpu": 2}, True), ({"cpu": 2}, {"cpu": 1}, False)):
        old, live, (r, p) = _reconciled(before, kuberay)
        old["lastDecisions"] = [{"reason": "kept"}]          # the autoscaler's keys pass through untouched
        new = status.with_readiness(old, live, after)
        want = status.ok_status(old, 3, r, p, live, after)
        assert {k: new[k] for k in want} == want, (before, after, kuberay)
        assert new["lastDecisions"] == [{"reason": "kept"}]
    old, live, _ = _reconciled({"cpu": 2})
    delta = status.changed(old, status.with_readiness(old, live, {"cpu": 1}))
    assert delta["pools"][0]["readyReplicas"] == 1 and delta["replicas"] == "cpu=1/2"
    assert set(delta) == {"pools", "replicas"}               # KubeRay Ready and one replica serves: Ready stays True
    delta = status.changed(old, status.with_readiness(old, live, {"cpu": 0}))
    ready = next(c for c in delta["conditions"] if c["type"] == "Ready")
    assert delta["ready"] == "False" and "pool(s) cpu have no replica" in ready["message"]


def test_the_refresh_leaves_alone_what_only_a_reconcile_may_say():
    invalid = status.invalid_status({}, 1, "ModelTooLarge", "does not fit")
    assert status.with_readiness(invalid, None, {"cpu": 1}) is None
    assert status.with_readiness({}, None, {"cpu": 1}) is None
    old, live, (r, p) = _reconciled({"cpu": 2})
    blocked = status.ok_status(old, 3, r, p, live, {"cpu": 2}, blocked=("UpgradeBlockedByBudget", "costs $9/h"))
    new = status.with_readiness(blocked, live, {"cpu": 1})
    prog = next(c for c in new["conditions"] if c["type"] == "Progressing")
    assert (prog["status"], prog["reason"], prog["message"]) == ("False", "UpgradeBlockedByBudget", "costs $9/h")


def test_refresh_counts_the_pods_and_patches_only_what_changed(monkeypatch):
    from moe_operator.handlers import kube

    old, live, _ = _reconciled({"cpu": 2})
    live["metadata"] = {"ownerReferences": [{"uid": "u-1"}]}
    rc = {"metadata": {"name": "rc-1"}, "spec": {"workerGroupSpecs": [{"groupName": "cpu", "replicas": 2}]}}
    pods = [pod("cpu"), pod("cpu", ready=False)]
    writes = []
    monkeypatch.setattr(kube, "get_moed", lambda ns, n: {"metadata": {"name": n, "namespace": ns, "uid": "u-1"},
                                                         "status": old})
    monkeypatch.setattr(kube, "get_rayservice", lambda ns, n: live)
    monkeypatch.setattr(kube, "active_raycluster", lambda ns, rs: rc)
    monkeypatch.setattr(kube, "ray_worker_pods", lambda ns, name: pods)
    monkeypatch.setattr(kube, "patch_moed_status", lambda ns, n, delta: writes.append(delta))
    delta = podwatch.refresh(("ns", "m"))
    assert writes == [delta] and delta["replicas"] == "cpu=1/2"
    old = {**old, **delta}
    assert podwatch.refresh(("ns", "m")) is None and len(writes) == 1   # nothing changed: no write
    live["metadata"] = {"ownerReferences": [{"uid": "someone-else"}]}
    pods[:] = []
    assert podwatch.refresh(("ns", "m")) is None and len(writes) == 1   # not ours: never written


def test_the_autoscaler_count_is_the_pods_and_the_runtime_together():
    # pods readable: the smaller of the two; a pool the runtime does not report: the pods alone
    assert for_autoscaler(["cpu", "gpu"], {"cpu": 1, "gpu": 2}, {"cpu": 2}, {}) == {"cpu": 1, "gpu": 2}
    assert for_autoscaler(["cpu"], {"cpu": 2}, {"cpu": 0}, {}) == {"cpu": 0}   # pods up, Serve not yet
    # pods unreadable: the runtime where it reports, else the RayCluster's figure
    assert for_autoscaler(["cpu", "gpu"], None, {"cpu": 0}, {"cpu": 2, "gpu": 1}) == {"cpu": 0, "gpu": 1}
    assert for_autoscaler(["cpu"], None, None, {"cpu": 2}) == {"cpu": 2}
    assert pod_ready(pod("cpu")) and not pod_ready(pod("cpu", ready=False))


def test_a_pool_with_one_of_two_pods_not_ready_is_decided_with_1_ready(monkeypatch):
    """Issue 13: a worker pod of a 2-replica pool dies; the runtime's moe_ready_replicas still says 2 (its
    placement-board liveness and the Prometheus scrape lag). The policy decides with 1 ready: the pods' count,
    not the desired count and not the stale gauge."""
    import copy

    from bad_specs import GOOD
    from moe_operator.catalog import Catalog
    from moe_operator.handlers import autoscale, kube
    from moe_operator.render import Images
    from moe_operator.render.pipeline import plan_and_render
    from test_operator_autoscale_units import _Cluster, _Source

    spec = {**GOOD, "pools": [{**GOOD["pools"][0], "replicas": 2}]}
    rs = plan_and_render("m", "default", spec, Catalog.default(), Images()).rayservice
    cluster, source = _Cluster(rs), _Source()   # test_operator_autoscale_units' fakes
    cluster.install(monkeypatch)
    rc = {"metadata": {"name": "rc"}, "spec": copy.deepcopy(rs["spec"]["rayClusterConfig"]),
          "status": {"readyWorkerReplicas": 2}}        # KubeRay's cluster-wide figure, not yet lowered either
    assert rc["spec"]["workerGroupSpecs"][0]["replicas"] == 2

    def worker(ready: bool) -> dict:
        return {"metadata": {"labels": {"ray.io/group": "cpu", "ray.io/cluster": "rc", "ray.io/node-type": "worker"}},
                "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
    pods = [worker(True), worker(True)]
    monkeypatch.setattr(kube, "active_raycluster", lambda ns, r: rc)
    monkeypatch.setattr(kube, "replace_raycluster_with_retry", lambda ns, name, mutate: mutate(rc))
    monkeypatch.setattr(kube, "ray_worker_pods", lambda ns, name: list(pods))
    monkeypatch.setattr(autoscale, "_source", lambda state, spec, model, engine="torch", scope=None: source)
    monkeypatch.setattr(autoscale, "STATES", {})
    from moe_operator.autoscaling import step   # the tick's observe -> ready -> decide (shared with moectl up)

    seen, real_decide = [], step.decide
    monkeypatch.setattr(step, "decide", lambda obs, *a: (seen.append(dict(obs.ready)), real_decide(obs, *a))[1])
    body = {"apiVersion": "serving.moe-operator.io/v1alpha1", "kind": "MoEDeployment",
            "metadata": {"name": "m", "namespace": "default", "generation": 1, "uid": "u-1"},
            "spec": {**spec, "autoscaling": {"enabled": True, "intervalSeconds": 10}}}
    source.ready = {"cpu": 2}
    for t in (1000, 1010):
        source.now, source.generated = t, 10.0
        autoscale.tick({**body, "status": copy.deepcopy(cluster.status)}, t)
        if t == 1000:
            assert seen[-1] == {"cpu": 2}
            pods[1] = worker(False)          # killed: KubeRay's pod no longer Ready
    assert seen[-1] == {"cpu": 1}
