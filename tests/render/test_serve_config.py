"""serveConfigV2: the torch app matches the runtime's RuntimeConfig; vLLM apps match Ray Serve LLM's schema."""
from __future__ import annotations

import pytest
import yaml

from moe_operator.api import MoEDeploymentSpec, load_manifest
from moe_operator.catalog import Catalog
from moe_operator.render import Images, render_for
from moe_operator.render.pipeline import plan_and_render
from moe_operator.render.serve import _vllm_block_size

from test_golden import ROOT
from test_rayservice import spec


def serve(s: MoEDeploymentSpec, name: str = "m") -> dict:
    return yaml.safe_load(render_for(name, "ns", s, Catalog.default(), None, Images())["spec"]["serveConfigV2"])


def test_torch_app_follows_contract_section_3_and_validates_as_runtime_config():
    m = load_manifest(ROOT / "examples" / "tiny-moe.yaml")
    app = serve(m.spec, "tiny-moe")["applications"][0]
    assert app["import_path"] == "moe_runtime.serve_app:app_builder" and app["route_prefix"] == "/"
    assert [d["name"] for d in app["deployments"]] == ["engine-cpu", "OpenAIIngress"]
    assert app["deployments"][0]["ray_actor_options"] == {"resources": {"pool-cpu": 1}}
    config = pytest.importorskip("moe_runtime.config")
    rc = config.RuntimeConfig.model_validate(app["args"])   # extra="forbid": a wrong key fails here
    assert rc.model_name == "tiny-moe" and rc.device == "cpu" and rc.max_batch_size == 8
    assert rc.cache.block_tokens == 32 and rc.pools[0].name == "cpu"


def test_vllm_engine_kwargs_and_placement():
    s = spec(quantization="fp8", cache={"prefix": True, "blockTokens": 48})
    apps = {a["name"]: a for a in serve(s)["applications"]}
    assert set(apps) == {"m-h800", "m-npu", "m"}                 # "m": the router at / (test_vllm_router_render)
    assert apps["m-h800"]["route_prefix"] == "/h800"
    cfg = apps["m-h800"]["args"]["llm_configs"][0]
    kw = cfg["engine_kwargs"]
    assert kw["tensor_parallel_size"] == 8 and kw["enable_expert_parallel"] is True
    assert kw["quantization"] == "fp8" and kw["enable_prefix_caching"] is True and kw["block_size"] == 32
    assert cfg["placement_group_config"]["bundle_per_worker"] == {"GPU": 1, "pool-h800": 0.001}
    assert "accelerator_type" not in cfg       # Ray has no H800 accelerator type
    npu = apps["m-npu"]["args"]["llm_configs"][0]
    assert npu["placement_group_config"]["bundle_per_worker"] == {"NPU": 1, "pool-npu": 0.001}


def test_data_parallel_pools_use_the_dp_builder():
    s = spec(pools=[{"name": "big", "accelerator": "nvidia-h100", "devicesPerReplica": 16, "maxReplicas": 2}])
    app = serve(s)["applications"][0]
    assert app["import_path"] == "ray.serve.llm:build_dp_openai_app" and app["route_prefix"] == "/"
    cfg = app["args"]["llm_config"]
    assert cfg["engine_kwargs"]["data_parallel_size"] == 2 and cfg["accelerator_type"] == "H100"
    assert cfg["placement_group_config"]["strategy"] == "PACK"


def test_vllm_block_size_is_a_power_of_two_within_vllm_limits():
    assert [_vllm_block_size(b) for b in (16, 48, 64, 4096)] == [16, 32, 64, 256]


def _without_request_router(cfg: dict) -> dict:
    """``cfg`` less the request router of a routed pool (render/vllm_router.py PREFIX_ROUTER). LLMConfig imports
    that class to validate it, and its module imports vLLM, absent here; test_vllm_router_render checks that the
    installed Ray defines it."""
    from moe_operator.render.vllm_router import PREFIX_ROUTER

    dc = dict(cfg.get("deployment_config") or {})
    rrc = dc.pop("request_router_config", None)
    assert rrc in (None, {"request_router_class": PREFIX_ROUTER}), rrc
    return {**cfg, "deployment_config": dc}


def _ray_llm_config():
    try:
        from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
    except Exception as exc:  # noqa: BLE001 - ray[llm] extras (pyarrow, ...) absent
        from require import need

        need("ray.serve.llm", f"not importable here ({exc}); the test extra installs pyarrow")
    return LLMConfig


@pytest.mark.parametrize("example", ["deepseek-v3-h800", "mixtral-8x7b-ascend", "qwen3-moe-mixed"])
def test_rendered_llm_configs_validate_against_ray_serve_llm(example):
    LLMConfig = _ray_llm_config()
    m = load_manifest(ROOT / "examples" / f"{example}.yaml")
    for app in serve(m.spec, m.metadata.name)["applications"]:
        if not app["import_path"].startswith("ray.serve.llm:"):
            continue   # the router app of a two-pool deployment (test_vllm_router_render)
        configs = app["args"].get("llm_configs") or [app["args"]["llm_config"]]
        for cfg in configs:
            cfg = _without_request_router(cfg)
            parsed = LLMConfig.model_validate(cfg)
            assert parsed.engine_kwargs["tensor_parallel_size"] >= 1
            assert parsed.model_loading_config.model_id == m.spec.model.served_model_name


def test_a_mixed_vendor_torch_app_gives_each_pool_its_own_device_dtype_and_placement():
    """An NVIDIA pool and an Ascend pool of one torch app: each pool's engine runs with its own device (cuda / npu),
    dtype and expert placement (shards on its own accelerators), never the first pool's (which asked an Ascend
    pool's shards for cuda and GPUs)."""
    m = load_manifest(ROOT / "examples" / "qwen3-moe-mixed.yaml")
    s = m.spec.model_copy(update={"engine": "torch"})
    rendered = plan_and_render("mixed", "ns", s, Catalog.default()).rayservice
    app = yaml.safe_load(rendered["spec"]["serveConfigV2"])["applications"][0]
    config = pytest.importorskip("moe_runtime.config")
    rc = config.RuntimeConfig.model_validate(app["args"])
    h100, ascend = rc.for_pool("h100"), rc.for_pool("ascend")
    assert (h100.device, ascend.device) == ("cuda", "npu")
    assert h100.dtype == ascend.dtype == "bfloat16"
    assert h100.placement is not None and ascend.placement is not None
    assert {sh.device for sh in h100.placement.shards} == {"cuda"}
    assert {sh.device for sh in ascend.placement.shards} == {"npu"}
    assert {k for sh in h100.placement.shards for k in sh.ray_resources} == {"GPU"}
    assert {k for sh in ascend.placement.shards for k in sh.ray_resources} == {"NPU"}
    assert h100.metrics_labels["pool"] == "h100" and ascend.metrics_labels["pool"] == "ascend"


def test_a_two_pool_torch_app_prices_its_pools_for_the_router_and_a_one_pool_app_does_not():
    """The router (moe_runtime.routing) ranks pools by $ per work unit from the plan: price per replica-hour over
    the replica's decode rate. A one-pool app renders no routing, so its args stay the bytes they were."""
    m = load_manifest(ROOT / "examples" / "qwen3-moe-mixed.yaml")
    s = m.spec.model_copy(update={"engine": "torch"})
    out = plan_and_render("mixed", "ns", s, Catalog.default())
    app = yaml.safe_load(out.rayservice["spec"]["serveConfigV2"])["applications"][0]
    routing = app["args"]["routing"]
    for pool in out.plan.pools:
        c = pool.capacity
        assert routing["dollars_per_work"][pool.name] == pytest.approx(c.price_per_hour / 3600 / c.decode_tps,
                                                                       rel=1e-5)
    assert routing["prompt_weight"] > 0 and routing["cached_prompt_weight"] > 0
    config = pytest.importorskip("moe_runtime.config")
    assert config.RuntimeConfig.model_validate(app["args"]).routing.dollars_per_work == routing["dollars_per_work"]
    one = plan_and_render("one", "ns", load_manifest(ROOT / "examples" / "tiny-moe.yaml").spec,
                          Catalog.default()).rayservice
    assert "routing" not in yaml.safe_load(one["spec"]["serveConfigV2"])["applications"][0]["args"]


@pytest.mark.parametrize("example", ["tiny-moe", "qwen3-moe-mixed"])
def test_a_pool_that_starts_at_zero_renders_one_serve_replica_and_no_pods(example):
    """Serve's REST schema refuses num_replicas 0 (KubeRay submits serveConfigV2 through it): a pool at zero is a
    worker group of 0 pods under one Serve replica that cannot be placed (llm_names.serve_count)."""
    m = load_manifest(ROOT / "examples" / f"{example}.yaml")
    pools = [p.model_copy(update={"min_replicas": 0, "initial_replicas": 0}) for p in m.spec.pools]
    s = m.spec.model_copy(update={"pools": pools})
    rs = plan_and_render("zero", "ns", s, Catalog.default()).rayservice
    groups = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert all(g["replicas"] == 0 for g in groups if g["groupName"] in {p.name for p in pools})
    cfg = yaml.safe_load(rs["spec"]["serveConfigV2"])
    counts = [d["num_replicas"] for a in cfg["applications"] for d in a.get("deployments", [])]
    assert counts and min(counts) >= 1
    schema = pytest.importorskip("ray.serve.schema")
    schema.ServeDeploySchema.model_validate({"applications": cfg["applications"]})
    from moe_operator.autoscaling.actuator import serve_replicas

    assert set(serve_replicas(rs).values()) == {0}
