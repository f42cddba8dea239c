"""The actuator sizes Ray Serve LLM (engine: vllm) apps: the pool's LLMConfig deployment_config.num_replicas and
its worker group, on the rendered examples, and the reconcile's re-render of the result is not drift."""
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
from moe_operator.handlers.autoscale import merge
from moe_operator.render import Images
from moe_operator.render.pipeline import plan_and_render

ROOT = Path(__file__).resolve().parents[2]
VLLM = ["deepseek-v3-h800", "mixtral-8x7b-ascend", "qwen3-moe-mixed"]


def rendered(example: str, replicas: dict[str, int] | None = None) -> tuple[dict, object]:
    m = load_manifest(ROOT / "examples" / f"{example}.yaml")
    return plan_and_render(m.metadata.name, "default", m.spec, Catalog.default(), Images(), replicas).rayservice, m


def llm_configs(rs: dict) -> dict[str, dict]:
    """{pool: LLMConfig dict} of a rendered vLLM RayService."""
    out = {}
    for app in yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]:
        for cfg in app["args"].get("llm_configs") or [app["args"]["llm_config"]]:
            pool = next(k[5:] for k in cfg["placement_group_config"]["bundle_per_worker"] if k.startswith("pool-"))
            out[pool] = cfg
    return out


@pytest.mark.parametrize("example", VLLM)
def test_vllm_pools_scale_through_llm_config_and_worker_group_only(example):
    rs, m = rendered(example)
    start = serve_replicas(rs)
    assert set(start) == {p.name for p in m.spec.pools}
    assert start == {p: c["deployment_config"]["num_replicas"] for p, c in llm_configs(rs).items()}
    want = {p: n + 1 + i for i, (p, n) in enumerate(sorted(start.items()))}   # pools move by different amounts
    patch = rayservice_patch(rs, want)
    assert set(patch["spec"]) == {"serveConfigV2", "rayClusterConfig"}
    live = merge(copy.deepcopy(rs), patch)
    assert serve_replicas(live) == want
    # nothing else in the Serve config moved: put the old counts back and it is the rendered config again
    back = yaml.safe_load(live["spec"]["serveConfigV2"])
    for app in back["applications"]:
        for cfg in app["args"].get("llm_configs") or [app["args"]["llm_config"]]:
            pool = next(k[5:] for k in cfg["placement_group_config"]["bundle_per_worker"] if k.startswith("pool-"))
            cfg["deployment_config"]["num_replicas"] = start[pool]
    assert back == yaml.safe_load(rs["spec"]["serveConfigV2"])
    groups = {g["groupName"]: g for g in live["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    old = {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    for p, n in want.items():
        assert (groups[p]["replicas"], groups[p]["minReplicas"]) == (n, n)
        assert groups[p]["maxReplicas"] == max(old[p]["maxReplicas"], n)
        assert groups[p]["numOfHosts"] == old[p]["numOfHosts"] and groups[p]["template"] == old[p]["template"]
    assert rayservice_patch(live, want) is None                                # decided again: nothing to write
    # the reconcile re-renders with the live worker-group sizes: that must not look like drift (no undo)
    again, _ = rendered(example, drift.live_replicas(live))
    assert not drift.drifted(live, again, strict=False)


def test_data_parallel_app_counts_dp_groups_in_llm_config():
    rs, _ = rendered("deepseek-v3-h800")
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    assert app["import_path"].endswith("build_dp_openai_app") and app["args"]["llm_config"]["engine_kwargs"]["data_parallel_size"] == 2
    live = merge(copy.deepcopy(rs), rayservice_patch(rs, {"h800": 3}))
    cfg = yaml.safe_load(live["spec"]["serveConfigV2"])["applications"][0]["args"]["llm_config"]
    assert cfg["deployment_config"]["num_replicas"] == 3                       # DP groups, not 3 x 2 Serve replicas
    assert cfg["engine_kwargs"]["data_parallel_size"] == 2
    assert live["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] == 3   # one 2-host group per DP group


def test_patched_field_is_the_one_ray_serve_llm_deploys_with():
    """The installed Ray Serve LLM's merge of its deployment defaults (which include a Serve autoscaling_config)
    with the patched deployment_config keeps our num_replicas and drops its autoscaler (Serve refuses both)."""
    from ray.llm._internal.common.dict_utils import maybe_apply_llm_deployment_config_defaults

    ray_defaults = {"max_ongoing_requests": 1000, "autoscaling_config": {"target_ongoing_requests": 32}}
    rs, _ = rendered("qwen3-moe-mixed")
    live = merge(copy.deepcopy(rs), rayservice_patch(rs, {"h100": 4, "ascend": 2}))
    for pool, cfg in llm_configs(live).items():
        options = maybe_apply_llm_deployment_config_defaults(ray_defaults, cfg["deployment_config"])
        assert options["num_replicas"] == {"h100": 4, "ascend": 2}[pool]
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
    assert parsed.deployment_config["num_replicas"] == 2


def test_serve_autoscaling_config_on_a_pool_is_refused():
    rs, _ = rendered("mixtral-8x7b-ascend")
    cfg = yaml.safe_load(rs["spec"]["serveConfigV2"])
    dc = cfg["applications"][0]["args"]["llm_configs"][0]["deployment_config"]
    dc.pop("num_replicas")
    dc["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 4}
    rs["spec"]["serveConfigV2"] = yaml.safe_dump(cfg)
    with pytest.raises(UserError, match="autoscaling_config"):
        rayservice_patch(rs, {"ascend": 2})


def test_pool_without_llm_config_is_user_error_naming_its_resource():
    rs, _ = rendered("mixtral-8x7b-ascend")
    with pytest.raises(UserError, match="pool-h800"):
        rayservice_patch(rs, {"ascend": 1, "h800": 1})
