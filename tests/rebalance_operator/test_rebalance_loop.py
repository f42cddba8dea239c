"""The rebalance loop's tick against an in-test runtime speaking the admin API contract, with the three Kubernetes
calls it makes (read the token, post an Event, patch the status) recorded instead of sent: the decision path,
the rare status writes, one Warning per distinct error, and each error kind said once."""
from __future__ import annotations

import copy

import pytest

from fake_runtime import FakeRuntime
from moe_operator.handlers import admin_secret, kube
from moe_operator.handlers import rebalance as rb

TOKEN = "s3cret-token"
PLACEMENT = {"numLayers": 2, "numExperts": 8,
             "shards": [{"name": "shard-0", "device": "cpu", "rayResources": {}},
                        {"name": "shard-1", "device": "cpu", "rayResources": {}}],
             "layers": [[[0, 1, 2, 3, 4, 5], [6, 7]]]}
SKEW = [[400, 300, 200, 100, 20, 20, 20, 20], [400, 300, 200, 100, 20, 20, 20, 20]]


class Recorder:
    def __init__(self, body):
        self.body, self.events, self.writes = body, [], []

    def post_event(self, body, type_, reason, message):
        self.events.append((type_, reason, message))

    def patch_status(self, ns, name, status):
        self.writes.append(copy.deepcopy(status))
        self.body.setdefault("status", {}).update(copy.deepcopy(status))


@pytest.fixture
def world(monkeypatch):
    fake = FakeRuntime(TOKEN, {"cpu": PLACEMENT}, replicas=2)
    body = {"apiVersion": "serving.moe-operator.io/v1alpha1", "kind": "MoEDeployment",
            "metadata": {"name": "m", "namespace": "ns", "uid": "u-1",
                         "annotations": {rb.URL_ANNOTATION: fake.url}},
            "spec": {"model": {"source": "builtin://tiny-moe"}, "engine": "torch",
                     "pools": [{"name": "cpu", "accelerator": "cpu", "pricePerDeviceHour": 0.05}],
                     "rebalance": {"enabled": True, "intervalSeconds": 10, "minGain": 0.05, "cooldownSeconds": 0}}}
    rec = Recorder(body)
    token = {"value": TOKEN}
    monkeypatch.setattr(admin_secret, "read_token", lambda ns, name, uid: token["value"])
    monkeypatch.setattr(kube, "post_event", rec.post_event)
    monkeypatch.setattr(kube, "patch_moed_status", rec.patch_status)
    monkeypatch.setattr(rb, "ALLOW_URL_ANNOTATION", True)   # the operator's --allow-runtime-url-annotation
    rb.STATES.clear()
    yield fake, body, rec, token
    fake.close()
    rb.STATES.clear()


def entry(body):
    return body["status"]["rebalance"][0]


def test_skew_is_rebalanced_once_and_status_is_written_only_on_change(world):
    fake, body, rec, _ = world
    rb.tick(body, now=1000.0)
    assert entry(body)["reason"] == "Waiting" and len(rec.writes) == 1
    fake.route("cpu", SKEW)
    rb.tick(body, now=1010.0)
    assert len(fake.posts) == 1 and fake.posts[0]["pool"] == "cpu"
    e = entry(body)
    assert e["reason"] == "Rebalancing" and e["imbalanceBefore"] > e["imbalanceAfter"] >= 1.0, e
    assert e["gain"] >= 0.05 and e["placementId"].startswith("p-") and e["lastRebalanceTime"]
    assert [r for _, r, _ in rec.events] == ["Rebalanced"]
    assert f"{e['imbalanceBefore']:.3f} -> {e['imbalanceAfter']:.3f}" in rec.events[0][2]
    rb.tick(body, now=1020.0)           # the fake's replicas followed at once: the application completed
    e = entry(body)
    assert e["reason"] == "Rebalanced" and (e["replicasApplied"], e["replicasTotal"]) == (2, 2), e
    assert len(rec.writes) == 3
    rb.tick(body, now=1030.0)           # no traffic since: a new kind, one write
    assert entry(body)["reason"] == "NoTraffic" and len(rec.writes) == 4
    for t in (1040.0, 1050.0, 1060.0):  # nothing changes: no writes, no Events, no posts
        rb.tick(body, now=t)
    assert len(rec.writes) == 4 and len(rec.events) == 1 and len(fake.posts) == 1
    fake.route("cpu", SKEW)             # the same skew on the balanced placement: nothing worth moving
    rb.tick(body, now=1070.0)
    assert entry(body)["reason"] == "Balanced" and len(fake.posts) == 1, entry(body)


def test_operator_metrics_count_moves_and_show_imbalance(world):
    from prometheus_client import REGISTRY

    fake, body, rec, _ = world
    labels = {"namespace": body["metadata"]["namespace"], "name": body["metadata"]["name"], "pool": "cpu"}

    def sample(metric):
        return REGISTRY.get_sample_value(metric, labels)

    moves_before = sample("moe_operator_rebalances_total") or 0.0
    rb.tick(body, now=1000.0)
    fake.route("cpu", SKEW)
    rb.tick(body, now=1010.0)
    e = entry(body)
    assert sample("moe_operator_rebalances_total") == moves_before + 1
    assert sample("moe_operator_expert_imbalance") == pytest.approx(e["imbalanceAfter"], abs=1e-3)
    rb.tick(body, now=1020.0)
    fake.route("cpu", SKEW)             # the same skew on the balanced placement: measured, not moved
    rb.tick(body, now=1030.0)
    assert sample("moe_operator_rebalances_total") == moves_before + 1
    assert 1.0 <= sample("moe_operator_expert_imbalance") < e["imbalanceBefore"]


def test_interval_is_respected_by_tick_due(world, monkeypatch):
    fake, body, rec, _ = world
    monkeypatch.setattr(kube, "list_moeds", lambda namespaces: [body])
    assert rb.tick_due(now=0.0) == 1
    assert rb.tick_due(now=5.0) == 0      # intervalSeconds 10
    assert rb.tick_due(now=10.0) == 1
    body["spec"]["rebalance"]["enabled"] = False
    assert rb.tick_due(now=100.0) == 0


def test_converging_replicas_block_a_second_move(world):
    fake, body, rec, _ = world
    fake.follow = False
    rb.tick(body, now=0.0)
    fake.route("cpu", SKEW)
    rb.tick(body, now=10.0)
    assert len(fake.posts) == 1 and entry(body)["reason"] == "Rebalancing"
    writes = len(rec.writes)
    fake.route("cpu", [[5, 5, 5, 5, 5, 5, 500, 500]] * 2)   # a new skew while the first move is under way
    rb.tick(body, now=20.0)
    assert len(fake.posts) == 1 and len(rec.writes) == writes   # still converging: no post, no write
    fake.converge()
    rb.tick(body, now=30.0)
    assert entry(body)["reason"] == "Rebalanced"


def test_cooldown_holds_without_writing(world):
    fake, body, rec, _ = world
    body["spec"]["rebalance"]["cooldownSeconds"] = 600
    rb.tick(body, now=0.0)
    fake.route("cpu", SKEW)
    rb.tick(body, now=10.0)
    rb.tick(body, now=20.0)
    assert entry(body)["reason"] == "Rebalanced"
    writes = len(rec.writes)
    fake.route("cpu", [[5, 5, 5, 5, 5, 5, 500, 500]] * 2)
    rb.tick(body, now=30.0)
    assert len(fake.posts) == 1 and len(rec.writes) == writes and entry(body)["reason"] == "Rebalanced"


@pytest.mark.parametrize(
    "breakage, kind",
    [
        ("token", "Unauthorized"),
        ("off", "AdminDisabled"),
        ("down", "Unreachable"),
        ("nosecret", "Waiting"),
        ("empty", "Unauthorized"),
    ],
)
def test_errors_are_said_once(world, breakage, kind):
    fake, body, rec, token = world
    if breakage == "token":
        token["value"] = "wrong"
    elif breakage in ("nosecret", "empty"):
        token["value"] = None if breakage == "nosecret" else ""
    elif breakage == "off":
        fake.admin_on = False
    else:
        fake.close()
    for t in (0.0, 10.0, 20.0):
        assert rb.tick(body, now=t) is None or t == 0.0
    assert entry(body)["reason"] == kind and len(rec.writes) == 1, body["status"]
    warnings = [e for e in rec.events if e[0] == "Warning"]
    assert len(warnings) == (1 if kind == "Unauthorized" else 0), rec.events


def test_runtime_url_defaults_to_kuberays_serve_service(monkeypatch):
    body = {"metadata": {"name": "m", "namespace": "team"}, "status": {"rayServiceName": "m"}}
    assert rb.runtime_url(body) == "http://m-serve-svc.team.svc:8000"
    body["metadata"]["annotations"] = {rb.URL_ANNOTATION: "http://127.0.0.1:9/"}
    monkeypatch.setattr(rb, "ALLOW_URL_ANNOTATION", False)
    assert rb.runtime_url(body) == "http://m-serve-svc.team.svc:8000"   # not opted in: the token stays in-cluster
    monkeypatch.setattr(rb, "ALLOW_URL_ANNOTATION", True)
    assert rb.runtime_url(body) == "http://127.0.0.1:9"


@pytest.mark.parametrize("forged", ["attacker.example.com:80/x#", "other-tenant", "127.0.0.1:9/#"])
def test_the_token_never_follows_a_forged_status_ray_service_name(forged):
    """Status is writable by anyone with status-patch rights: the URL (and so the Bearer token) must not follow
    it (issue 14 item 12). The RayService is always named after the MoEDeployment."""
    body = {"metadata": {"name": "m", "namespace": "team"}, "status": {"rayServiceName": forged}}
    assert rb.runtime_url(body) == "http://m-serve-svc.team.svc:8000"


def test_annotation_without_opt_in_gets_no_token_and_the_status_says_why(world, monkeypatch):
    fake, body, rec, _ = world
    monkeypatch.setattr(rb, "ALLOW_URL_ANNOTATION", False)
    seen = []

    def get_experts(url, token):
        seen.append(url)
        raise rb.AdminError("Unreachable", f"runtime admin API at {url} unreachable: test")

    monkeypatch.setattr(rb, "get_experts", get_experts)
    rb.tick(body, now=0.0)
    e = entry(body)
    assert e["reason"] == "Unreachable" and "ignored" in e["message"] and rb.URL_ANNOTATION in e["message"], e
    assert seen == ["http://m-serve-svc.ns.svc:8000"] and fake.url not in e["message"]


def test_unknown_pool_on_post_is_a_failure_not_admin_off(world):
    fake, *_ = world
    with pytest.raises(rb.AdminError) as exc:
        rb.post_placement(fake.url, TOKEN, "gpu", PLACEMENT)
    assert exc.value.kind == "Failed" and "unknown pool" in str(exc.value)
    fake.admin_on = False                   # a plain 404: the admin API is off
    with pytest.raises(rb.AdminError) as exc:
        rb.post_placement(fake.url, TOKEN, "cpu", PLACEMENT)
    assert exc.value.kind == "AdminDisabled"


def test_status_times_round_trip():
    from moe_operator.api.times import parse_rfc3339, rfc3339

    assert rfc3339(1764365100.9) == "2025-11-28T21:25:00Z"
    assert parse_rfc3339("2025-11-28T21:25:00Z") == 1764365100.0
    assert parse_rfc3339("") is None and parse_rfc3339("yesterday") is None


@pytest.mark.parametrize(
    "status, code, kind",
    [
        (409, "placement_superseded", "Waiting"),
        (404, "unknown_pool", "Failed"),
        (404, None, "AdminDisabled"),
        (401, "invalid_admin_token", "Unauthorized"),
        (500, None, "Failed"),
    ],
)
def test_admin_answers_map_to_status_kinds(monkeypatch, status, code, kind):
    import httpx

    def answer(request):
        return httpx.Response(status, json={"error": {"message": "m", "type": "t", "code": code}})

    monkeypatch.setattr(rb, "_CLIENT", httpx.Client(transport=httpx.MockTransport(answer)))
    with pytest.raises(rb.AdminError) as err:
        rb._admin("POST", "http://127.0.0.1:9", "/admin/v1/placement", "tok", json={})
    assert err.value.kind == kind, err.value
