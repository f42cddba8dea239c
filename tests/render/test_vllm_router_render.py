"""One OpenAI endpoint at / for a vLLM deployment of two or more pools (issue 12, render/vllm_router.py): the router
app at /, the pool apps at /<pool>, every app valid for Ray Serve's own deploy schema, the router pinned to the
head, whose image can import it; one-pool deployments render as before."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from moe_operator.api import load_manifest
from moe_operator.catalog import Catalog
from moe_operator.render import Images
from moe_operator.render.llm_names import llm_deployment_name
from moe_operator.render.pipeline import plan_and_render
from moe_operator.render.vllm_router import PREFIX_ROUTER, ROUTER_IMPORT_PATH

from test_golden import ROOT


def rendered(example: str) -> tuple[dict, dict]:
    m = load_manifest(ROOT / "examples" / f"{example}.yaml")
    out = plan_and_render(m.metadata.name, "ns", m.spec, Catalog.default(), Images())
    return out.rayservice, yaml.safe_load(out.rayservice["spec"]["serveConfigV2"])


def serve_schema():
    try:
        from ray.serve.schema import ServeDeploySchema
    except ImportError as exc:
        from require import need

        need("ray[serve]", str(exc))
    return ServeDeploySchema


def test_a_two_pool_vllm_render_has_one_route_at_root_and_it_is_the_router():
    rs, cfg = rendered("qwen3-moe-mixed")
    ServeDeploySchema = serve_schema()
    ServeDeploySchema.model_validate(cfg)       # the whole serveConfigV2, as Ray Serve's REST API takes it
    apps = cfg["applications"]
    at_root = [a for a in apps if a["route_prefix"] == "/"]
    assert [a["import_path"] for a in at_root] == [ROUTER_IMPORT_PATH]
    router = at_root[0]
    assert router["name"] == "qwen3-moe"
    pool_apps = [a for a in apps if a is not router]
    assert sorted(a["route_prefix"] for a in pool_apps) == ["/ascend", "/h100"]   # kept for debugging
    # the router calls each pool's LLM server deployment by (app, deployment): the names Serve gives them
    want = [{"name": a["name"].rsplit("-", 1)[1], "app_name": a["name"],
             "deployment": llm_deployment_name(a["import_path"], a["args"]["llm_configs"][0])} for a in pool_apps]
    got = [{k: p[k] for k in ("name", "app_name", "deployment")} for p in router["args"]["pools"]]
    assert got == want and all(w["deployment"] == a["deployments"][0]["name"] for w, a in zip(want, pool_apps))
    assert router["args"]["model_name"] == "qwen3-30b-a3b"
    assert {p["max_num_seqs"] for p in router["args"]["pools"]} == {16}
    for a in pool_apps:
        assert a["args"]["llm_configs"][0]["deployment_config"]["request_router_config"] == {
            "request_router_class": PREFIX_ROUTER}


def test_the_router_is_priced_from_the_plan_as_the_torch_router_is():
    m = load_manifest(ROOT / "examples" / "qwen3-moe-mixed.yaml")
    out = plan_and_render("mixed", "ns", m.spec, Catalog.default())
    router = next(a for a in yaml.safe_load(out.rayservice["spec"]["serveConfigV2"])["applications"]
                  if a["import_path"] == ROUTER_IMPORT_PATH)
    for pool in out.plan.pools:
        c = pool.capacity
        got = next(p for p in router["args"]["pools"] if p["name"] == pool.name)["dollars_per_work"]
        assert got == pytest.approx(c.price_per_hour / 3600 / c.decode_tps, rel=1e-5)
    assert router["args"]["weights"]["prompt"] > router["args"]["weights"]["cached_prompt"] > 0


def test_the_router_runs_cpu_only_on_the_head_whose_image_imports_it():
    rs, cfg = rendered("qwen3-moe-mixed")
    router = next(a for a in cfg["applications"] if a["import_path"] == ROUTER_IMPORT_PATH)
    (dep,) = router["deployments"]
    assert dep["name"] == "MoERouter" and dep["ray_actor_options"] == {"num_cpus": 0, "resources": {"moe-router": 1}}
    rcc = rs["spec"]["rayClusterConfig"]
    head = rcc["headGroupSpec"]
    assert "moe-router" in head["rayStartParams"]["resources"] and head["rayStartParams"]["num-cpus"] == "0"
    assert all("moe-router" not in g["rayStartParams"].get("resources", "") for g in rcc["workerGroupSpecs"])
    assert head["template"]["spec"]["containers"][0]["image"] == Images().vllm_router
    dockerfile = (ROOT / "images" / "vllm-router.Dockerfile").read_text()
    # the head runs the workers' Ray and Python: the Dockerfile's base is Images.vllm_nvidia
    base = dockerfile.split("ARG RAY_LLM_IMAGE=docker.io/")[1].split()[0]
    assert base.replace("${RAY_VERSION}", Images().vllm_ray_version) == Images().vllm_nvidia
    for module in ("__init__", "routing", "pool_choice", "vllm_router"):
        assert f"runtime/moe_runtime/{module}.py" in dockerfile, module


def test_the_router_builds_from_the_rendered_args_and_imports_no_engine():
    import json
    import subprocess
    import sys

    _, cfg = rendered("qwen3-moe-mixed")
    router = next(a for a in cfg["applications"] if a["import_path"] == ROUTER_IMPORT_PATH)
    code = ("import sys, json; from moe_runtime.vllm_router import build_app; "
            f"build_app(json.loads({json.dumps(json.dumps(router['args']))})); "
            "assert 'torch' not in sys.modules and 'vllm' not in sys.modules, 'engine imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_prefix_router_is_ray_serve_llms_own_in_the_installed_ray():
    import ray

    module, _, cls = PREFIX_ROUTER.rpartition(".")
    source = Path(ray.__file__).parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
    assert f"class {cls}(" in source.read_text()     # importing it needs vLLM, which this machine lacks


@pytest.mark.parametrize("example", ["deepseek-v3-h800", "mixtral-8x7b-ascend", "qwen15-moe-inline-config"])
def test_a_one_pool_vllm_render_has_no_router(example):
    rs, cfg = rendered(example)
    (app,) = cfg["applications"]
    assert app["route_prefix"] == "/" and app["import_path"].startswith("ray.serve.llm:")
    assert "request_router_config" not in str(app["args"])
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"] == {"dashboard-host": "0.0.0.0", "num-cpus": "0"}
    assert head["template"]["spec"]["containers"][0]["image"] == Images().vllm_nvidia
