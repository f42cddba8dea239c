"""admin_secret.ensure against a recording CoreV1Api stand-in (the real API server path is covered by
test_rebalance_on_cluster.py): POST first and GET only on 409, nothing more once the Secret is known, and an API
error other than 403 logged once instead of failing the reconcile that creates the RayService."""
from __future__ import annotations

import base64
import logging

import pytest
from kubernetes.client.rest import ApiException

from moe_operator.api import MoEDeploymentSpec
from moe_operator.handlers import admin_secret

BODY = {"apiVersion": "serving.moe-operator.io/v1alpha1", "kind": "MoEDeployment",
        "metadata": {"name": "m", "namespace": "ns", "uid": "u-1"}}


def spec(enabled: bool = True) -> MoEDeploymentSpec:
    return MoEDeploymentSpec.model_validate(
        {"model": {"source": "builtin://tiny-moe"}, "engine": "torch",
         "pools": [{"name": "cpu", "accelerator": "cpu", "pricePerDeviceHour": 0.05}],
         "rebalance": {"enabled": enabled}})


class Core:
    """Records calls; ``create`` / ``read`` are the status codes to fail with (None: succeed)."""

    def __init__(
        self, create: int | None = None, read: int | None = None, token: str = "t0k", owner: str | None = "u-1"
    ):
        self.calls, self.create, self.read, self.token, self.owner = [], create, read, token, owner

    def create_namespaced_secret(self, ns, body):
        self.calls.append(("create", ns, body["metadata"]["name"]))
        if self.create:
            raise ApiException(status=self.create, reason="nope")

    def read_namespaced_secret(self, name, ns):
        self.calls.append(("read", ns, name))
        if self.read:
            raise ApiException(status=self.read, reason="nope")
        refs = [{"kind": "MoEDeployment", "name": "m", "uid": self.owner}] if self.owner else []
        return {"metadata": {"name": name, "ownerReferences": refs},
                "data": {"token": base64.b64encode(self.token.encode()).decode()}}


@pytest.fixture
def core(monkeypatch):
    holder = {}
    monkeypatch.setattr(admin_secret, "_core", lambda: holder["core"])
    admin_secret._present.clear()
    admin_secret._warned.clear()
    yield holder
    admin_secret._present.clear()
    admin_secret._warned.clear()


def test_posts_first_then_never_again_for_the_same_object(core):
    core["core"] = c = Core()
    assert admin_secret.ensure(BODY, spec()) == "created"
    assert c.calls == [("create", "ns", "m-runtime-admin")]          # no GET before the POST
    for _ in range(3):                                                # drift sweeps, status updates ...
        assert admin_secret.ensure(BODY, spec()) == "known"
    assert len(c.calls) == 1
    assert admin_secret.ensure(BODY, spec(False)) is None and len(c.calls) == 1


@pytest.mark.parametrize("owner", [None, "u-other"])
def test_a_secret_this_deployment_does_not_own_is_refused_and_its_token_never_used(core, caplog, owner):
    """Whoever pre-creates <name>-runtime-admin knows its token: adopting it would hand them the runtime's admin API
    (issue 14 item 11). Refused, said once, and read_token (the rebalancer's) does not return it either."""
    core["core"] = Core(create=409, owner=owner)
    with caplog.at_level(logging.WARNING, logger=admin_secret.__name__):
        assert admin_secret.ensure(BODY, spec()) == "foreign"
        assert admin_secret.ensure(BODY, spec()) == "foreign"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not owned" in warnings[0], warnings
    assert admin_secret.read_token("ns", "m", "u-1") is None


def test_read_token_returns_the_token_of_our_own_secret_only(core):
    core["core"] = Core()
    assert admin_secret.read_token("ns", "m", "u-1") == "t0k"
    assert admin_secret.read_token("ns", "m", "u-2") is None


def test_existing_secret_is_read_only_on_409(core):
    core["core"] = c = Core(create=409)
    assert admin_secret.ensure(BODY, spec()) == "adopted"
    assert [k for k, *_ in c.calls] == ["create", "read"]
    core["core"] = c = Core(create=409, token="")
    admin_secret._present.clear()
    assert admin_secret.ensure(BODY, spec()) is None                  # empty token: reported, retried later
    assert admin_secret.ensure(BODY, spec()) is None and len(c.calls) == 4


@pytest.mark.parametrize("failure", [dict(create=500), dict(create=403), dict(create=409, read=503)])
def test_api_errors_never_fail_the_reconcile_and_are_logged_once(core, caplog, failure):
    core["core"] = Core(**failure)
    with caplog.at_level(logging.WARNING, logger=admin_secret.__name__):
        assert admin_secret.ensure(BODY, spec()) is None
        assert admin_secret.ensure(BODY, spec()) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "m-runtime-admin" in warnings[0], warnings


def test_a_deleted_deployment_is_forgotten(core):
    core["core"] = c = Core()
    assert admin_secret.ensure(BODY, spec()) == "created"
    admin_secret.forget("ns", "m")
    assert not admin_secret._present
    assert admin_secret.ensure(BODY, spec()) != "known" and len(c.calls) == 2   # a same-named new object: asked again


def test_a_secret_deleted_by_hand_is_created_again_within_the_recheck_interval(core, monkeypatch):
    """"known" is not forever (issue 14 item 16): after RECHECK_S the next reconcile (the drift sweep runs one per
    interval) asks the API again, and a Secret someone deleted is created anew."""
    clock = [1000.0]
    monkeypatch.setattr(admin_secret.time, "monotonic", lambda: clock[0])
    core["core"] = c = Core()
    assert admin_secret.ensure(BODY, spec()) == "created"
    clock[0] += admin_secret.RECHECK_S - 1
    assert admin_secret.ensure(BODY, spec()) == "known" and len(c.calls) == 1
    clock[0] += 2                                          # the Secret was deleted meanwhile: the POST succeeds
    assert admin_secret.ensure(BODY, spec()) == "created" and len(c.calls) == 2
