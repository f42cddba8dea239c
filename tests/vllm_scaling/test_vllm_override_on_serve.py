"""On real Ray Serve: the actuator's vLLM scale (a deployments[] override of the LLM server deployment) adds
replicas and keeps the running ones, for a plain and a data-parallel app rendered from the examples.

vLLM cannot run here, so the apps' import_path is swapped for ``vllm_shape_app`` (same builder signature and
deployment names as Ray Serve LLM); everything else is the serveConfigV2 the render and the actuator produce,
applied through Serve's declarative config API as ``moectl up`` does (moe_runtime.local_serve.deploy). Control: the
old way (the count inside args) replaces the running replica.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from moe_operator.api import load_manifest
from moe_operator.autoscaling.actuator import rayservice_patch, serve_replicas
from moe_operator.catalog import Catalog
from moe_operator.render import Images
from moe_operator.render.pipeline import plan_and_render

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
EXAMPLES = {"mixtral-8x7b-ascend": "ascend", "deepseek-v3-h800": "h800"}   # plain app, DP app (dp 2)


def rendered(example: str) -> dict:
    m = load_manifest(ROOT / "examples" / f"{example}.yaml")
    return plan_and_render(m.metadata.name, "default", m.spec, Catalog.default(), Images()).rayservice


def local(serve_config: str) -> dict:
    """The rendered Serve config with the fake builder in place of ray.serve.llm, one route per app."""
    cfg = yaml.safe_load(serve_config)
    for app in cfg["applications"]:
        app["import_path"] = app["import_path"].replace("ray.serve.llm:", "vllm_shape_app:")
        app["route_prefix"] = f"/{app['name']}"
    return cfg


def both(configs: list[str]) -> dict:
    return {"applications": [a for c in configs for a in local(c)["applications"]]}


@pytest.fixture(scope="module")
def serve_port():
    try:
        from ray import serve  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        from require import need

        need("ray[serve]", str(exc))
    from ray_support import ray_session

    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)   # workers import the fake app
    with ray_session({"PYTHONPATH": path}) as port:
        yield port


def replica_ids(app: str, deployment: str) -> set[str]:
    """Actor ids of the deployment's Serve replicas (alive named actors ``...<app>#<deployment>#<id>``)."""
    import ray

    out = set()
    for a in ray.util.list_named_actors(all_namespaces=True):
        if f"{app}#{deployment}#" in a["name"]:
            try:
                out.add(ray.get_actor(a["name"], namespace=a["namespace"])._actor_id.hex())
            except ValueError:
                pass   # stopped between the listing and the lookup
    return out


def deployed_at() -> dict[str, float]:
    """When Serve took each app's current config (its controller clock); a later deploy of the app moves it."""
    from ray import serve

    return {name: st.last_deployed_time_s for name, st in serve.status().applications.items()}


def wait_for(want: dict[tuple[str, str], int], timeout: float = 300,
             after: dict[str, float] | None = None) -> dict[tuple[str, str], set[str]]:
    """Wait until every (app, deployment) runs exactly its number of RUNNING replicas; their actor ids. With
    ``after`` (from deployed_at() before a deploy), only a status of the newer config counts: Serve marks an app
    DEPLOYING when it takes a config, so RUNNING with a newer time is the new config rolled out. ``timeout`` only
    bounds a broken deploy: replicas took over 60 s to start on a busy 2-core machine."""
    from ray import serve

    end = time.monotonic() + timeout
    while True:
        apps = serve.status().applications
        ok = True
        for (app, dep), n in want.items():
            st = apps.get(app)
            d = st.deployments.get(dep) if st else None
            running = {str(getattr(k, "value", k)): v for k, v in ((d.replica_states or {}) if d else {}).items()}
            ok &= (st is not None and str(getattr(st.status, "value", st.status)) == "RUNNING"
                   and running.get("RUNNING", 0) == n and not set(running) - {"RUNNING"}
                   and (after is None or st.last_deployed_time_s > after[app]))
            if st is not None and str(getattr(st.status, "value", st.status)) == "DEPLOY_FAILED":
                raise AssertionError(f"{app}: {st.message}")
        if ok:
            ids = {k: replica_ids(*k) for k in want}
            if all(len(ids[k]) == n for k, n in want.items()):
                return ids
        if time.monotonic() > end:
            raise AssertionError(f"not {want} after {timeout} s: {apps}")
        time.sleep(0.5)


@pytest.mark.timing_sensitive
def test_vllm_scale_through_the_override_keeps_running_replicas(serve_port):
    from moe_runtime import local_serve as rt

    t0 = time.monotonic()
    before = {ex: rendered(ex) for ex in EXAMPLES}
    names = {}
    for ex, rs in before.items():
        (app,) = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
        names[ex] = (app["name"], app["deployments"][0]["name"])
    assert names == {"mixtral-8x7b-ascend": ("mixtral-8x7b-ascend", "LLMServer:mixtral-8x7b"),
                     "deepseek-v3-h800": ("deepseek-v3-h800", "DPServer:deepseek-v3")}
    assert {ex: serve_replicas(rs) for ex, rs in before.items()} == {"mixtral-8x7b-ascend": {"ascend": 1},
                                                                     "deepseek-v3-h800": {"h800": 1}}
    rt.deploy(both([rs["spec"]["serveConfigV2"] for rs in before.values()]), port=serve_port)
    plain, dp = names["mixtral-8x7b-ascend"], names["deepseek-v3-h800"]
    first = wait_for({plain: 1, dp: 2})                      # one DP group = data_parallel_size 2 Serve replicas
    started = time.monotonic() - t0

    # the autoscaler's decision 1 -> 2 for each pool, as the operator would patch it
    after = {ex: rayservice_patch(rs, {pool: 2})["spec"]["serveConfigV2"] for (ex, rs), pool in
             zip(before.items(), EXAMPLES.values())}
    deployed = deployed_at()
    rt.deploy(both(list(after.values())), port=serve_port)
    second = wait_for({plain: 2, dp: 4}, after=deployed)
    assert first[plain] < second[plain], (first, second)     # the running replica kept, one added
    assert first[dp] < second[dp], (first, second)           # the running DP group kept, one group added
    scaled = time.monotonic() - t0 - started

    # control, the old way: the same 1 -> 2 written into the LLMConfig in args, no override
    cfg = local(after["mixtral-8x7b-ascend"])
    app = cfg["applications"][0]
    app.pop("deployments")
    app["args"]["llm_configs"][0]["deployment_config"]["num_replicas"] = 2
    deployed = deployed_at()
    rt.deploy({"applications": [app, *both([after["deepseek-v3-h800"]])["applications"]]}, port=serve_port)
    third = wait_for({plain: 2, dp: 4}, after=deployed)   # not the old replicas still RUNNING
    assert not (third[plain] & second[plain]), (second, third)   # every replica replaced: what the override avoids
    assert third[dp] == second[dp]                              # the untouched app kept its replicas
    print(f"\nvLLM-shaped apps on Ray Serve: start {started:.1f} s, override scale 1->2 (plain) and 1->2 DP "
          f"groups (2->4 replicas) {scaled:.1f} s keeping {len(first[plain] & second[plain])}/1 and "
          f"{len(first[dp] & second[dp])}/2 replicas; args scale kept {len(second[plain] & third[plain])}/2")
