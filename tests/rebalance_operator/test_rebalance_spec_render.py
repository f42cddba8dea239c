"""spec.rebalance: defaults, ranges, torch only (the same sentence offline and in the CRD's CEL); the admin token
env rendered into every Ray container only when rebalancing is on; the Secret's shape."""
from __future__ import annotations

import base64

import pytest
import yaml
from pydantic import ValidationError

from moe_operator.api import MoEDeploymentSpec
from moe_operator.catalog import Catalog
from moe_operator.handlers.admin_secret import new_token, secret_body, token_of
from moe_operator.render.context import build_render_input
from moe_operator.planning import plan_deployment
from moe_operator.render.rayservice import render_rayservice

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def spec(**rebalance):
    return {"model": {"source": "builtin://tiny-moe"}, "engine": "torch",
            "pools": [{"name": "cpu", "accelerator": "cpu", "pricePerDeviceHour": 0.05}], "rebalance": rebalance}


def test_defaults_and_ranges():
    r = MoEDeploymentSpec.model_validate(spec()).rebalance
    assert (r.enabled, r.interval_seconds, r.min_gain, r.cooldown_seconds, r.redundant_slots) == (
        False,
        300,
        0.05,
        900,
        0,
    )
    for bad in ({"intervalSeconds": 9}, {"minGain": 1.0}, {"minGain": -0.1}, {"cooldownSeconds": -1},
                {"redundantSlots": -1}, {"period": 10}):
        with pytest.raises(ValidationError):
            MoEDeploymentSpec.model_validate(spec(**bad))


def test_vllm_is_refused_with_the_crds_sentence():
    with pytest.raises(ValidationError, match="EPLB"):
        MoEDeploymentSpec.model_validate(
            {
                **spec(enabled=True),
                "engine": "vllm",
                "pools": [{"name": "h", "accelerator": "nvidia-h100", "devicesPerReplica": 8}],
            }
        )
    MoEDeploymentSpec.model_validate({**spec(enabled=False), "engine": "vllm",
                                      "pools": [{"name": "h", "accelerator": "nvidia-h100", "devicesPerReplica": 8}]})
    crd = yaml.safe_load((ROOT / "crds" / "serving.moe-operator.io_moedeployments.yaml").read_text())
    rules = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"]
    assert any("rebalance" in r["rule"] and "EPLB" in r["message"] for r in rules)


def render(enabled: bool) -> dict:
    s = MoEDeploymentSpec.model_validate(spec(enabled=enabled))
    catalog = Catalog.default()
    return render_rayservice(build_render_input("m", "ns", s, catalog, plan_deployment(s, catalog, "m")))


def containers(rs: dict) -> list[dict]:
    cfg = rs["spec"]["rayClusterConfig"]
    pods = [cfg["headGroupSpec"]] + cfg["workerGroupSpecs"]
    return [c for p in pods for c in p["template"]["spec"]["containers"]]


def test_token_env_in_every_ray_container_only_when_enabled():
    on = containers(render(True))
    assert len(on) == 2
    for c in on:
        env = {e["name"]: e for e in c["env"]}
        assert env["MOE_ADMIN_TOKEN"]["valueFrom"] == {
            "secretKeyRef": {"name": "m-runtime-admin", "key": "token", "optional": True}}
        assert [e["name"] for e in c["env"]] == sorted(e["name"] for e in c["env"])
    off = containers(render(False))
    assert not [e for c in off for e in c["env"] if e["name"] == "MOE_ADMIN_TOKEN"]
    assert {e["name"] for e in off[0]["env"]} == {"MOE_DEPLOYMENT"}


def test_secret_body_is_owned_and_holds_a_fresh_token():
    owner = {"apiVersion": "serving.moe-operator.io/v1alpha1", "kind": "MoEDeployment",
             "metadata": {"name": "m", "namespace": "ns", "uid": "u-1"}}
    a, b = new_token(), new_token()
    assert a != b and len(base64.urlsafe_b64decode(a + "=")) == 32
    s = secret_body(owner, a)
    assert s["metadata"]["name"] == "m-runtime-admin" and s["metadata"]["namespace"] == "ns"
    ref = s["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("MoEDeployment", "m", "u-1", True)
    assert token_of(s) == a
    assert token_of({"data": {}}) == "" and token_of({"data": {"token": base64.b64encode(b"  ").decode()}}) == ""


def test_secret_carries_the_rayservices_labels_and_namespace():
    owner = {"apiVersion": "serving.moe-operator.io/v1alpha1", "kind": "MoEDeployment",
             "metadata": {"name": "m", "namespace": "ns", "uid": "u-1"}}
    s = secret_body(owner, new_token())
    assert s["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "moe-operator",
                                       "serving.moe-operator.io/deployment": "m"}
    assert s["metadata"]["namespace"] == "ns"
    ref = s["metadata"]["ownerReferences"][0]
    assert (ref["apiVersion"], ref["blockOwnerDeletion"]) == ("serving.moe-operator.io/v1alpha1", True)
