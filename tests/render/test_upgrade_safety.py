"""A replicas-only change must never make KubeRay roll out a new RayCluster.

KubeRay v1.5.0 (ray-operator/controllers/ray/rayservice_controller.go) decides between "do nothing", "update
in place" and "roll out a new cluster" by hashing rayClusterConfig with every worker group's replicas,
minReplicas, maxReplicas and scaleStrategy.workersToDelete cleared; serveConfigV2 is applied to the running
cluster through the dashboard and is not part of that hash. This test applies the same rule to our renders.
"""
from __future__ import annotations

import copy
import hashlib
import json

import yaml

from moe_operator.catalog import Catalog
from moe_operator.render import Images, render_for

from test_rayservice import spec


def kuberay_hash(cluster_spec: dict) -> str:
    s = copy.deepcopy(cluster_spec)
    for g in s.get("workerGroupSpecs", []):
        for k in ("replicas", "minReplicas", "maxReplicas"):
            g.pop(k, None)
        g.get("scaleStrategy", {}).pop("workersToDelete", None)
    s.pop("upgradeStrategy", None)
    return hashlib.sha1(json.dumps(s, sort_keys=True).encode()).hexdigest()


def render(s, **kw):
    return render_for("m", "ns", s, Catalog.default(), None, Images(), **kw)


def test_replicas_only_change_keeps_the_cluster_hash():
    a = render(spec())
    b = render(spec(), replicas={"h800": 3, "npu": 2})
    assert a["spec"]["rayClusterConfig"] != b["spec"]["rayClusterConfig"]
    assert kuberay_hash(a["spec"]["rayClusterConfig"]) == kuberay_hash(b["spec"]["rayClusterConfig"])
    # the Serve side follows the same replicas in the LLM server deployment's override; args (Serve's code
    # version: a change replaces every replica) keep the start count
    apps = {x["name"]: x for x in yaml.safe_load(b["spec"]["serveConfigV2"])["applications"]}
    assert apps["m-h800"]["deployments"][0]["num_replicas"] == 3
    start = {x["name"]: x for x in yaml.safe_load(a["spec"]["serveConfigV2"])["applications"]}
    assert {n: x["args"] for n, x in apps.items()} == {n: x["args"] for n, x in start.items()}


def test_bounds_change_keeps_the_cluster_hash_but_a_device_change_does_not():
    raw = spec().model_dump(by_alias=True)
    raw["pools"][0]["maxReplicas"] = 7
    from moe_operator.api import MoEDeploymentSpec
    wider = render(MoEDeploymentSpec.model_validate(raw))
    base = render(spec())
    assert kuberay_hash(base["spec"]["rayClusterConfig"]) == kuberay_hash(wider["spec"]["rayClusterConfig"])
    raw["pools"][0]["devicesPerReplica"] = 4
    smaller = render(MoEDeploymentSpec.model_validate(raw))
    assert kuberay_hash(base["spec"]["rayClusterConfig"]) != kuberay_hash(smaller["spec"]["rayClusterConfig"])
