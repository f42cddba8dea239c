"""RayService structure: head without accelerators, one worker group per pool, vendor resources and Ray resources."""
from __future__ import annotations

import json

import pytest
import yaml

from moe_operator.api import MoEDeploymentSpec
from moe_operator.catalog import Catalog
from moe_operator.errors import SpecInvalid
from moe_operator.render import Images, render_for
from moe_operator.render.vendor import ray_resources_param


def spec(**over) -> MoEDeploymentSpec:
    base = {
        "model": {"source": "hf://org/m", "architecture": "mixtral"},
        "engine": "vllm",
        "pools": [
            {"name": "h800", "accelerator": "nvidia-h800", "devicesPerReplica": 8, "minReplicas": 1, "maxReplicas": 3},
            {
                "name": "npu",
                "accelerator": "ascend-910b",
                "devicesPerReplica": 4,
                "minReplicas": 0,
                "maxReplicas": 2,
                "replicas": 1,
                "pricePerDeviceHour": 1.0,
                "nodeSelector": {"zone": "b"},
                "tolerations": [{"key": "huawei.com/Ascend910", "operator": "Exists", "effect": "NoSchedule"}],
            },
        ],
    }
    base.update(over)
    return MoEDeploymentSpec.model_validate(base)


def render(s=None, catalog=None, **kw):
    return render_for("m", "ns", s or spec(), catalog or Catalog.default(), None, Images(), **kw)


def groups(rs):
    return {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def test_head_has_no_accelerators_and_schedules_no_work():
    one = spec(pools=[spec().pools[0].model_dump(by_alias=True, exclude_none=True)])
    head = render(one)["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"] == {"dashboard-host": "0.0.0.0", "num-cpus": "0"}
    # two vLLM pools: still no CPU, only the router's own resource (render/vllm_router.py)
    two = render()["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]
    assert two == {"dashboard-host": "0.0.0.0", "num-cpus": "0", "resources": ray_resources_param({"moe-router": 100})}
    res = head["template"]["spec"]["containers"][0]["resources"]
    assert set(res["requests"]) == {"cpu", "memory"} and set(res["limits"]) == {"cpu", "memory"}


def test_one_worker_group_per_pool_with_vendor_resources_and_selectors():
    g = groups(render())
    assert list(g) == ["h800", "npu"]
    gpu = g["h800"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert gpu["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H800"}
    assert g["h800"]["rayStartParams"]["num-gpus"] == "8"
    npu = g["npu"]["template"]["spec"]
    assert npu["containers"][0]["resources"]["requests"]["huawei.com/Ascend910"] == "4"
    assert npu["nodeSelector"] == {"accelerator": "huawei-Ascend910", "zone": "b"}
    assert npu["tolerations"] == [{"key": "huawei.com/Ascend910", "operator": "Exists", "effect": "NoSchedule"}]
    env = {e["name"]: e["value"] for e in npu["containers"][0]["env"]}
    assert env["ASCEND_RT_VISIBLE_DEVICES"] == "0,1,2,3" and "HCCL_CONNECT_TIMEOUT" in env
    assert "num-gpus" not in g["npu"]["rayStartParams"]
    assert (g["npu"]["replicas"], g["npu"]["minReplicas"], g["npu"]["maxReplicas"]) == (1, 0, 2)


def _resources(param: str) -> dict:
    """Undo KubeRay's quoting: the value is a double-quoted JSON string with escaped inner quotes."""
    assert param.startswith('"') and param.endswith('"')
    return json.loads(param[1:-1].replace('\\"', '"'))


def test_ray_resources_follow_kuberay_quoting():
    assert ray_resources_param({"pool-a": 1, "NPU": 8}) == '"{\\"NPU\\": 8, \\"pool-a\\": 1}"'
    g = groups(render())
    assert _resources(g["npu"]["rayStartParams"]["resources"]) == {"NPU": 4, "pool-npu": 1}
    assert _resources(g["h800"]["rayStartParams"]["resources"]) == {"pool-h800": 1}
    # the YAML form is exactly what KubeRay documents: resources: '"{\"NPU\": 4, ...}"'
    line = yaml.safe_dump({"resources": g["npu"]["rayStartParams"]["resources"]}).strip()
    assert line == "resources: '\"{\\\"NPU\\\": 4, \\\"pool-npu\\\": 1}\"'"


def test_hami_scheme_uses_per_model_resource_name():
    cat = Catalog.default().with_overrides({"ascendResourceScheme": "hami"})
    npu = groups(render(catalog=cat))["npu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "huawei.com/Ascend910B3" in npu and "huawei.com/Ascend910" not in npu


def test_replica_spanning_two_nodes_uses_num_of_hosts():
    s = spec(pools=[{"name": "big", "accelerator": "nvidia-h800", "devicesPerReplica": 16, "maxReplicas": 2}])
    g = groups(render(s))["big"]
    assert g["numOfHosts"] == 2
    assert g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    with pytest.raises(SpecInvalid) as e:
        render(spec(pools=[{"name": "odd", "accelerator": "nvidia-h800", "devicesPerReplica": 12}]))
    assert e.value.reason == "DevicesDoNotDivide" and "multiple of 8" in str(e.value)


def test_images_per_vendor_and_engine_and_pool_override():
    imgs = Images.from_mapping({"vllm_huawei": "registry.local/vllm-ascend:x"})
    s = spec()
    g = groups(render_for("m", "ns", s, Catalog.default(), None, imgs))
    assert g["npu"]["template"]["spec"]["containers"][0]["image"] == "registry.local/vllm-ascend:x"
    assert g["h800"]["template"]["spec"]["containers"][0]["image"] == Images().vllm_nvidia
    raw = s.model_dump(by_alias=True)
    raw["pools"][0]["image"] = "mine:1"
    g = groups(render(MoEDeploymentSpec.model_validate(raw)))
    assert g["h800"]["template"]["spec"]["containers"][0]["image"] == "mine:1"
    with pytest.raises(Exception, match="unknown image keys"):
        Images.from_mapping({"vllm_amd": "x"})


def test_live_replicas_are_kept_within_bounds():
    g = groups(render(replicas={"h800": 3, "npu": 9}))
    assert g["h800"]["replicas"] == 3 and g["npu"]["replicas"] == 2   # clamped to maxReplicas


DISK = {"diskTier": {"enabled": True, "size": "100Gi", "storageClassName": "nvme", "path": "/cache"}}


def test_pvc_model_is_mounted_and_a_vllm_pod_gets_no_cache_volume():
    s = spec(model={"source": "pvc://weights/mixtral", "catalogName": "mixtral-8x7b"})
    pod = groups(render(s))["h800"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["model"]["persistentVolumeClaim"] == {"claimName": "weights", "readOnly": True}
    assert "prefix-cache" not in vols   # vLLM's prefix cache lives in accelerator memory (a disk tier: SpecInvalid)
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["model"] == "/models" and "prefix-cache" not in mounts
    with pytest.raises(SpecInvalid, match="torch engine's"):
        render(spec(model={"source": "pvc://weights/mixtral", "catalogName": "mixtral-8x7b"}, cache=DISK))
    serve = yaml.safe_load(render(s)["spec"]["serveConfigV2"])
    assert (
        serve["applications"][0]["args"]["llm_configs"][0]["model_loading_config"]["model_source"] == "/models/mixtral"
    )
