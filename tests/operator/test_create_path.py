"""The create handler's API calls: POST first (no GET before it, none after it), GET only on 409 AlreadyExists.

The kube module is replaced by a recorder so the exact call sequence is visible; the real API server path of the
same code (a killed operator's leftover RayService, 409, exactly one RayService) is
tests/operator/test_faults_on_cluster.py.
"""
from __future__ import annotations

import copy

import pytest

from moe_operator.handlers import kube, reconcile

BODY = {"apiVersion": "serving.moe-operator.io/v1alpha1", "kind": "MoEDeployment",
        "metadata": {"name": "m1", "namespace": "ns", "uid": "u-1", "generation": 1},
        "spec": {"model": {"source": "builtin://tiny-moe", "architecture": "tiny"}, "engine": "torch",
                 "pools": [{"name": "cpu", "accelerator": "cpu", "devicesPerReplica": 1, "minReplicas": 0,
                            "maxReplicas": 3, "replicas": 1}]}}


class Recorder:
    def __init__(self, existing: dict | None):
        self.calls: list[str] = []
        self.existing = existing
        self.posted: dict | None = None

    def get_rayservice(self, namespace, name):
        self.calls.append("GET")
        return copy.deepcopy(self.existing)

    def create_rayservice_object(self, namespace, body):
        self.calls.append("POST")
        if self.existing is not None:
            return None
        self.posted = copy.deepcopy(body)
        return {**copy.deepcopy(body), "metadata": {**body["metadata"], "uid": "rs-1", "resourceVersion": "7"}}

    def post_event(self, body, type_, reason, message):
        self.calls.append(f"EVENT {reason}")

    def replace_with_retry(self, namespace, name, mutate):
        self.calls.append("REPLACE")
        return False


@pytest.fixture
def rec(monkeypatch):
    def install(existing):
        r = Recorder(existing)
        for fn in ("get_rayservice", "create_rayservice_object", "post_event", "replace_with_retry"):
            monkeypatch.setattr(kube, fn, getattr(r, fn))
        monkeypatch.setattr(kube, "active_raycluster", lambda ns, rs: None)   # no RayCluster yet: no pod counts
        monkeypatch.setattr(kube, "post_event_soon", r.post_event)
        return r
    return install


def test_new_object_is_posted_without_reading_first_or_after(rec):
    r = rec(None)
    out = reconcile.reconcile(copy.deepcopy(BODY), fresh=True)
    assert r.calls == ["POST", "EVENT Created"]
    assert out.status["rayServiceName"] == "m1" and out.status["ready"] == "False"


def test_existing_rayservice_is_read_on_409_and_keeps_the_autoscaler_size(rec):
    r0 = rec(None)
    reconcile.reconcile(copy.deepcopy(BODY), fresh=True)
    live = copy.deepcopy(r0.posted)
    live["metadata"]["uid"] = "rs-1"
    from moe_operator.autoscaling import actuator

    (pool,) = actuator.serve_replicas(live)
    actuator.merge(live, actuator.rayservice_patch(live, {pool: 3}))   # the autoscaler scaled it up (Serve and group)
    r = rec(live)
    out = reconcile.reconcile(copy.deepcopy(BODY), fresh=True)
    assert r.calls[:2] == ["POST", "GET"] and "EVENT Created" not in r.calls
    assert out.status["pools"][0]["desiredReplicas"] == 3   # re-rendered from the live size, not the spec's 1


def test_other_reconciles_still_read_before_writing(rec):
    r = rec(None)
    reconcile.reconcile(copy.deepcopy(BODY))
    assert r.calls == ["GET", "POST", "EVENT Created"]


def test_queued_events_go_out_in_order_and_a_failure_does_not_stop_the_poster(monkeypatch):
    sent: list[str] = []

    def post(body, type_, reason, message):
        if reason == "Boom":
            raise RuntimeError("API down")
        sent.append(reason)

    monkeypatch.setattr(kube, "post_event", post)
    for reason in ("Created", "Boom", "Updated", "ScaledUp"):
        kube.post_event_soon(BODY, "Normal", reason, "m")
    kube._events.join()
    assert sent == ["Created", "Updated", "ScaledUp"]


def _strangers(owner_uid: str | None) -> dict:
    """A RayService of the same name that someone else made (owned by another object, or by nothing)."""
    refs = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": owner_uid}] if owner_uid else []
    return {"apiVersion": "ray.io/v1", "kind": "RayService",
            "metadata": {"name": "m1", "namespace": "ns", "uid": "rs-9", "ownerReferences": refs},
            "spec": {"serveConfigV2": "applications: []", "rayClusterConfig": {"workerGroupSpecs": []}}}


@pytest.mark.parametrize("fresh", [True, False])
@pytest.mark.parametrize("owner", [None, "someone-else"])
def test_a_rayservice_it_does_not_own_is_never_overwritten_and_the_status_says_so(rec, fresh, owner):
    """Overwriting a stranger's RayService and adding our ownerReference would let deleting the MoEDeployment
    delete it (issue 14 item 11): it is left alone, Ready is False with a reason a person can act on."""
    r = rec(_strangers(owner))
    out = reconcile.reconcile(copy.deepcopy(BODY), fresh=fresh)
    assert "REPLACE" not in r.calls and r.calls.count("POST") <= 1
    ready = next(c for c in out.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "RayServiceNotOwned")
    assert "not owned by this MoEDeployment" in ready["message"]
    assert [e[1] for e in out.events] == ["RayServiceNotOwned"]
    again = reconcile.reconcile({**copy.deepcopy(BODY), "status": out.status}, fresh=fresh)
    assert again.events == []                   # said once, not on every timer tick


@pytest.mark.parametrize("secret", ["created", "foreign"])
def test_a_strangers_admin_secret_is_never_injected_into_the_pods(rec, monkeypatch, secret):
    """Whoever pre-created <name>-runtime-admin knows its token (issue 14 item 11): the pods must not read it."""
    from moe_operator.handlers import admin_secret

    monkeypatch.setattr(admin_secret, "ensure", lambda body, spec: secret)
    r = rec(None)
    body = copy.deepcopy(BODY)
    body["spec"]["rebalance"] = {"enabled": True}
    reconcile.reconcile(body, fresh=True)
    text = str(r.posted)
    assert ("runtime-admin" in text) == (secret == "created"), text[:300]


@pytest.mark.parametrize("fresh", [True, False])
def test_a_rayservice_the_api_server_rejects_is_spec_invalid_once_not_a_retry_loop(rec, monkeypatch, fresh):
    """A value our schema lets through but Kubernetes refuses in the pods (a nodeSelector key that is no label key)
    failed every reconcile with an exception, retried forever (issue 14 item 13): now SpecInvalid, one Warning."""
    import json

    from kubernetes.client.rest import ApiException

    r = rec(None)

    def reject(namespace, body):
        r.calls.append("POST")
        exc = ApiException(status=422, reason="Unprocessable Entity")
        exc.body = json.dumps({"kind": "Status", "message": 'RayService.ray.io "m1" is invalid: spec.rayClusterConfig'
                               '.workerGroupSpecs[0].template.spec.nodeSelector: Invalid value: "bad key": name part '
                               "must consist of alphanumeric characters" + "x" * 50_000})
        raise exc
    monkeypatch.setattr(kube, "create_rayservice_object", reject)
    out = reconcile.reconcile(copy.deepcopy(BODY), fresh=fresh)
    spec_invalid = next(c for c in out.status["conditions"] if c["type"] == "SpecInvalid")
    assert (spec_invalid["status"], spec_invalid["reason"]) == ("True", "RayServiceRejected")
    assert "nodeSelector: Invalid value" in spec_invalid["message"] and len(spec_invalid["message"]) <= 32768
    assert [e[1] for e in out.events] == ["RayServiceRejected"]
    again = reconcile.reconcile({**copy.deepcopy(BODY), "status": out.status}, fresh=fresh)
    assert again.events == []


def test_status_counts_ready_replicas_from_the_pods_not_from_the_desired_count(rec, monkeypatch):
    """KubeRay says Ready, but a worker pod of the pool was killed: readyReplicas is 0 and Ready False (issue 13)."""
    r0 = rec(None)
    reconcile.reconcile(copy.deepcopy(BODY), fresh=True)
    live = copy.deepcopy(r0.posted)
    live["metadata"]["uid"] = "rs-1"
    live["status"] = {"conditions": [{"type": "Ready", "status": "True", "reason": "RayServiceReady"}]}
    rec(live)
    rc = {"metadata": {"name": "rc-1"}, "spec": copy.deepcopy(live["spec"]["rayClusterConfig"])}
    monkeypatch.setattr(kube, "active_raycluster", lambda ns, rs: rc)
    ready_pod = {"metadata": {"labels": {"ray.io/group": "cpu", "ray.io/cluster": "rc-1"}},
                 "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    monkeypatch.setattr(kube, "ray_worker_pods", lambda ns, cluster: [ready_pod])
    out = reconcile.reconcile(copy.deepcopy(BODY))
    assert out.status["pools"][0]["readyReplicas"] == 1 and out.status["ready"] == "True"
    monkeypatch.setattr(kube, "ray_worker_pods", lambda ns, cluster: [])          # the pod was killed
    out = reconcile.reconcile(copy.deepcopy(BODY))
    assert out.status["pools"][0]["readyReplicas"] == 0 and out.status["ready"] == "False"
    ready = next(c for c in out.status["conditions"] if c["type"] == "Ready")
    assert "cpu" in ready["message"] and "Ready" in ready["message"], ready
