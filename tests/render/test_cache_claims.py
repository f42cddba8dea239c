"""The disk tier's claims (render/cache_claims.py): one ReadWriteMany claim per pool of a torch deployment, sized for
maxReplicas writers plus the runtime's headroom, mounted by that pool's pods; none for vLLM or with the tier off."""
from __future__ import annotations

from pathlib import Path

import yaml

from moe_operator.api import MoEDeploymentSpec
from moe_operator.catalog import Catalog
from moe_operator.render import Images, build_render_input, render_for
from moe_operator.render.cache_claims import claim_bytes, render_cache_claims


def torch_spec(disk: dict | None = None, engine: str = "torch") -> MoEDeploymentSpec:
    raw = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples/tiny-moe-two-pools.yaml").read_text())["spec"]
    raw["engine"] = engine
    raw["cache"]["diskTier"] = disk or {"enabled": True, "size": "9Gi", "storageClassName": "nfs", "path": "/kv"}
    return MoEDeploymentSpec.model_validate(raw)


def inputs(s: MoEDeploymentSpec):
    return build_render_input("m", "ns", s, Catalog.default(), None, Images())


def test_one_claim_per_pool_sized_for_max_replicas_writers_and_headroom():
    s = torch_spec()
    claims = render_cache_claims(inputs(s), {"app": "x"})
    assert [c["metadata"]["name"] for c in claims] == [f"m-prefix-cache-{p.name}" for p in s.pools]
    for c, p in zip(claims, s.pools):
        assert c["spec"]["accessModes"] == ["ReadWriteMany"] and c["spec"]["storageClassName"] == "nfs"
        mib = int(c["spec"]["resources"]["requests"]["storage"].removesuffix("Mi"))
        assert mib * 2**20 == claim_bytes(9 * 2**30, p.max_replicas)
        assert mib * 2**20 * 0.9 >= 9 * 2**30 * p.max_replicas   # every writer's budget fits beside the headroom
        assert c["metadata"]["labels"] == {"app": "x", "serving.moe-operator.io/pool": p.name}


def test_each_pools_pods_mount_their_own_claim_at_the_path_the_runtime_writes():
    s = torch_spec()
    rs = render_for("m", "ns", s, Catalog.default(), None, Images())
    for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        pod = g["template"]["spec"]
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols["prefix-cache"] == {"name": "prefix-cache",
                                        "persistentVolumeClaim": {"claimName": f"m-prefix-cache-{g['groupName']}"}}
        assert {"name": "prefix-cache", "mountPath": "/kv"} in pod["containers"][0]["volumeMounts"]
        # the runtime (uid 1000) writes the shared volume through its group, without chowning it on every start
        assert pod["securityContext"] == {"fsGroup": 1000, "fsGroupChangePolicy": "OnRootMismatch"}
    off = render_for("m", "ns", torch_spec({"enabled": False}), Catalog.default(), None, Images())
    assert all("securityContext" not in g["template"]["spec"] for g in off["spec"]["rayClusterConfig"][
        "workerGroupSpecs"])   # no volume, no pod-level change (a pod-template change means a new Ray cluster)
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    assert serve["applications"][0]["args"]["cache"]["disk_dir"] == "/kv"


def test_no_claim_without_the_tier_and_clear_errors_for_a_tier_the_cluster_cannot_give():
    import pytest

    from moe_operator.errors import SpecInvalid

    assert render_cache_claims(inputs(torch_spec({"enabled": False}))) == []
    with pytest.raises(SpecInvalid, match="vLLM keeps its prefix cache in accelerator memory") as err:
        inputs(torch_spec(engine="vllm"))
    assert err.value.reason == "DiskTierUnsupported"
    with pytest.raises(SpecInvalid, match="ReadWriteMany") as err:   # the default class is usually ReadWriteOnce
        inputs(torch_spec({"enabled": True, "size": "9Gi"}))
    assert err.value.reason == "DiskTierNeedsStorageClass"
