"""The actuator sizes Ray Serve LLM (engine: vllm) apps through the deployments[] override of the LLM server
deployment (never args, which would restart every replica) and the pool's worker group, on the rendered examples,
and the reconcile's re-render of the result is not drift."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from moe_operator.api import load_manifest
from moe_operator.autoscaling.actuator import rayservice_patch, serve_replicas
from moe_operator.catalog import Catalog
from moe_operator.errors import UserError
from moe_operator.handlers import drift
from moe_operator.autoscaling.actuator import merge
from moe_operator.render import Images
from moe_operator.render.llm_names import llm_deployment_name
from moe_operator.render.pipeline import plan_and_render

ROOT = Path(__file__).resolve().parents[2]
VLLM = ["deepseek-v3-h800", "mixtral-8x7b-ascend", "qwen3-moe-mixed"]


def rendered(example: str, replicas: dict[str, int] | None = None) -> tuple[dict, object]:
    m = load_manifest(ROOT / "examples" / f"{example}.yaml")
    return plan_and_render(m.metadata.name, "default", m.spec, Catalog.default(), Images(), replicas).rayservice, m


def llm_configs(rs: dict) -> dict[str, dict]:
    """{pool: LLMConfig dict} of a rendered vLLM RayService."""
    out = {}
    for app in _llm_apps(rs):
        for cfg in app["args"].get("llm_configs") or [app["args"]["llm_config"]]:
            pool = next(k[5:] for k in cfg["placement_group_config"]["bundle_per_worker"] if k.startswith("pool-"))
            out[pool] = cfg
    return out


def _llm_apps(rs: dict) -> list[dict]:
    """The Ray Serve LLM apps of a vLLM RayService (not the router app of two-pool deployments)."""
    return [a for a in yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
            if str(a.get("import_path", "")).startswith("ray.serve.llm:")]


def overrides(rs: dict) -> dict[str, list[dict]]:
    """{app name: its deployments[] overrides} of a vLLM RayService's Ray Serve LLM apps."""
    return {a["name"]: a.get("deployments") for a in _llm_apps(rs)}


def args_of(rs: dict) -> dict[str, dict]:
    return {a["name"]: a["args"] for a in yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]}


@pytest.mark.parametrize("example", VLLM)
def test_vllm_pools_scale_through_the_deployment_override_never_args(example):
    rs, m = rendered(example)
    start = serve_replicas(rs)
    assert set(start) == {p.name for p in m.spec.pools}
    assert start == {p: c["deployment_config"]["num_replicas"] for p, c in llm_configs(rs).items()}
    want = {p: n + 1 + i for i, (p, n) in enumerate(sorted(start.items()))}   # pools move by different amounts
    patch = rayservice_patch(rs, want)
    assert set(patch["spec"]) == {"serveConfigV2", "rayClusterConfig"}
    live = merge(copy.deepcopy(rs), patch)
    assert serve_replicas(live) == want
    assert args_of(live) == args_of(rs)                         # args (Serve's code version) untouched: no restart
    # only the overrides' num_replicas moved: put the old counts back and it is the rendered config again
    back = yaml.safe_load(live["spec"]["serveConfigV2"])
    for app in back["applications"]:
        if not app["import_path"].startswith("ray.serve.llm:"):
            continue   # the router app of a two-pool deployment has no replica count of a pool
        cfg = (app["args"].get("llm_configs") or [app["args"]["llm_config"]])[0]
        pool = next(k[5:] for k in cfg["placement_group_config"]["bundle_per_worker"] if k.startswith("pool-"))
        dp = cfg["engine_kwargs"].get("data_parallel_size", 1) if app["import_path"].endswith("dp_openai_app") else 1
        (dep,) = app["deployments"]
        assert dep["num_replicas"] == want[pool] * dp
        dep["num_replicas"] = start[pool] * dp
    assert back == yaml.safe_load(rs["spec"]["serveConfigV2"])
    groups = {g["groupName"]: g for g in live["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    old = {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    for p, n in want.items():
        assert (groups[p]["replicas"], groups[p]["minReplicas"]) == (n, n)
        assert groups[p]["maxReplicas"] == max(old[p]["maxReplicas"], n)
        assert groups[p]["numOfHosts"] == old[p]["numOfHosts"] and groups[p]["template"] == old[p]["template"]
    assert rayservice_patch(live, want) is None                                # decided again: nothing to write
    # the reconcile re-renders with the live worker-group sizes: that must not look like drift (no undo), and a
    # spec change's strict repair (which resets worker-group bounds) writes back the same Serve config
    again, _ = rendered(example, drift.live_replicas(live))
    assert not drift.drifted(live, again, strict=False)
    assert args_of(again) == args_of(rs) and overrides(again) == overrides(live)
    repaired = copy.deepcopy(live)
    drift.repair(repaired, again, strict=True)
    assert yaml.safe_load(repaired["spec"]["serveConfigV2"]) == yaml.safe_load(live["spec"]["serveConfigV2"])


def test_override_names_the_llm_server_deployment_as_ray_serve_llm_does():
    """LLMServer:/DPServer: + the model id with / -> -- and . -> _.

    As Ray 2.49.1, 2.58.0 and 2.60 builders do (llm_names.py).
    """
    names = {}
    for example in VLLM:
        rs, _ = rendered(example)
        names.update({app: [d["name"] for d in deps] for app, deps in overrides(rs).items()})
    assert names == {"deepseek-v3-h800": ["DPServer:deepseek-v3"],
                     "mixtral-8x7b-ascend": ["LLMServer:mixtral-8x7b"],
                     "qwen3-moe-h100": ["LLMServer:qwen3-30b-a3b"],
                     "qwen3-moe-ascend": ["LLMServer:qwen3-30b-a3b"]}
    cfg = {"model_loading_config": {"model_id": "deepseek-ai/DeepSeek-V3.1"}, "deployment_config": {}}
    assert llm_deployment_name("ray.serve.llm:build_openai_app", cfg) == "LLMServer:deepseek-ai--DeepSeek-V3_1"
    cfg["deployment_config"]["name"] = "mine"                   # honoured by both releases, still prefixed
    assert llm_deployment_name("ray.serve.llm:build_dp_openai_app", cfg) == "DPServer:mine"
    assert llm_deployment_name("ray.serve.llm:build_pd_openai_app", cfg) is None


def test_data_parallel_app_counts_dp_groups_and_the_override_holds_serve_replicas():
    rs, _ = rendered("deepseek-v3-h800")
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    assert (
        app["import_path"].endswith("build_dp_openai_app")
        and app["args"]["llm_config"]["engine_kwargs"]["data_parallel_size"] == 2
    )
    assert app["deployments"][0]["num_replicas"] == 2 * app["args"]["llm_config"]["deployment_config"]["num_replicas"]
    live = merge(copy.deepcopy(rs), rayservice_patch(rs, {"h800": 3}))
    app = yaml.safe_load(live["spec"]["serveConfigV2"])["applications"][0]
    assert app["deployments"][0]["num_replicas"] == 6                  # 3 DP groups x data_parallel_size 2
    assert app["args"]["llm_config"]["deployment_config"]["num_replicas"] == 1   # the start count, untouched
    assert serve_replicas(live) == {"h800": 3}
    assert live["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] == 3   # one 2-host group per DP group


def test_a_rayservice_rendered_before_the_override_gets_one_and_keeps_its_args():
    """A vLLM RayService from an older operator holds the count in the LLMConfig only: the first scale adds the
    override (the LLMConfig's count is read as the live one), args stay, so even that scale restarts nothing."""
    rs, _ = rendered("mixtral-8x7b-ascend", {"ascend": 2})
    cfg = yaml.safe_load(rs["spec"]["serveConfigV2"])
    for app in cfg["applications"]:
        app.pop("deployments")
        app["args"]["llm_configs"][0]["deployment_config"]["num_replicas"] = 2
    rs["spec"]["serveConfigV2"] = yaml.safe_dump(cfg, sort_keys=False)
    assert serve_replicas(rs) == {"ascend": 2}
    assert "serveConfigV2" not in rayservice_patch(rs, {"ascend": 2})["spec"]   # same count: no Serve write
    live = merge(copy.deepcopy(rs), rayservice_patch(rs, {"ascend": 3}))
    assert overrides(live) == {"mixtral-8x7b-ascend": [{"name": "LLMServer:mixtral-8x7b", "num_replicas": 3}]}
    assert args_of(live) == args_of(rs) and serve_replicas(live) == {"ascend": 3}


def test_patched_override_keeps_ray_serve_llm_from_adding_its_autoscaler():
    """The installed Ray Serve LLM merges its deployment defaults (which include a Serve autoscaling_config) with
    the LLMConfig's deployment_config: the rendered start count drops its autoscaler, and it stays the start count."""
    from ray.llm._internal.common.dict_utils import maybe_apply_llm_deployment_config_defaults

    ray_defaults = {"max_ongoing_requests": 1000, "autoscaling_config": {"target_ongoing_requests": 32}}
    rs, _ = rendered("qwen3-moe-mixed")
    live = merge(copy.deepcopy(rs), rayservice_patch(rs, {"h100": 4, "ascend": 2}))
    for pool, cfg in llm_configs(live).items():
        options = maybe_apply_llm_deployment_config_defaults(ray_defaults, cfg["deployment_config"])
        assert options["num_replicas"] == llm_configs(rs)[pool]["deployment_config"]["num_replicas"]
        assert "autoscaling_config" not in options


def test_patched_llm_config_validates_against_ray_serve_llm():
    try:
        from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
    except Exception as exc:  # noqa: BLE001 - ray[llm] needs vLLM or SGLang installed
        from require import need

        need("ray.serve.llm", f"not importable here ({exc})")
    rs, _ = rendered("deepseek-v3-h800")
    live = merge(copy.deepcopy(rs), rayservice_patch(rs, {"h800": 2}))
    parsed = LLMConfig.model_validate(llm_configs(live)["h800"])
    assert parsed.deployment_config["num_replicas"] == 1


def test_serve_autoscaling_config_on_a_pool_is_refused():
    rs, _ = rendered("mixtral-8x7b-ascend")
    cfg = yaml.safe_load(rs["spec"]["serveConfigV2"])
    dc = cfg["applications"][0]["args"]["llm_configs"][0]["deployment_config"]
    dc.pop("num_replicas")
    rs["spec"]["serveConfigV2"] = yaml.safe_dump(cfg)
    with pytest.raises(UserError, match="no integer deployment_config.num_replicas"):
        rayservice_patch(rs, {"ascend": 2})                    # Ray Serve LLM would add its default autoscaler
    dc["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 4}
    rs["spec"]["serveConfigV2"] = yaml.safe_dump(cfg)
    with pytest.raises(UserError, match="autoscaling_config"):
        rayservice_patch(rs, {"ascend": 2})


def test_pool_without_llm_config_is_user_error_naming_its_resource():
    rs, _ = rendered("mixtral-8x7b-ascend")
    with pytest.raises(UserError, match="pool-h800"):
        rayservice_patch(rs, {"ascend": 1, "h800": 1})
