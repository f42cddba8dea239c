"""The actuator's merge patch: Serve replicas and worker groups move, nothing else does."""
import pytest
import yaml

from moe_operator.autoscaling.actuator import rayservice_patch, serve_replicas
from moe_operator.errors import UserError


def rayservice():
    serve = {
        "applications": [
            {
                "name": "m",
                "route_prefix": "/",
                "import_path": "moe_runtime.serve_app:app_builder",
                "args": {"model_name": "m"},
                "deployments": [
                    {"name": "engine-h800", "num_replicas": 1, "ray_actor_options": {"resources": {"pool-h800": 1}}},
                    {
                        "name": "engine-ascend",
                        "num_replicas": 2,
                        "ray_actor_options": {"resources": {"pool-ascend": 1}},
                    },
                    {"name": "OpenAIIngress", "num_replicas": 1},
                ],
            }
        ]
    }
    groups = [
        {
            "groupName": "h800",
            "replicas": 1,
            "minReplicas": 0,
            "maxReplicas": 4,
            "numOfHosts": 1,
            "template": {"spec": {"x": 1}},
        },
        {
            "groupName": "ascend",
            "replicas": 2,
            "minReplicas": 0,
            "maxReplicas": 4,
            "numOfHosts": 2,
            "template": {"spec": {"y": 2}},
        },
    ]
    return {
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve),
            "rayClusterConfig": {"headGroupSpec": {"h": 1}, "workerGroupSpecs": groups},
        }
    }


def test_patch_sets_serve_and_worker_replicas_only():
    rs = rayservice()
    patch = rayservice_patch(rs, {"h800": 3, "ascend": 2})
    assert set(patch["spec"]) == {"serveConfigV2", "rayClusterConfig"}
    assert set(patch["spec"]["rayClusterConfig"]) == {"workerGroupSpecs"}   # head untouched
    assert serve_replicas(patch) == {"h800": 3, "ascend": 2}
    new_cfg = yaml.safe_load(patch["spec"]["serveConfigV2"])
    old_cfg = yaml.safe_load(rs["spec"]["serveConfigV2"])
    old_cfg["applications"][0]["deployments"][0]["num_replicas"] = 3
    assert new_cfg == old_cfg                                              # nothing else in the Serve config moved
    g = {x["groupName"]: x for x in patch["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert (g["h800"]["replicas"], g["h800"]["minReplicas"], g["h800"]["maxReplicas"]) == (3, 3, 4)
    assert g["ascend"]["template"] == {"spec": {"y": 2}} and g["ascend"]["numOfHosts"] == 2


def test_no_patch_when_unchanged_and_max_raised():
    rs = rayservice()
    first = rayservice_patch(rs, {"h800": 1, "ascend": 2})
    rs["spec"]["rayClusterConfig"]["workerGroupSpecs"] = first["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert rayservice_patch(rs, {"h800": 1, "ascend": 2}) is None
    up = rayservice_patch(rs, {"h800": 6, "ascend": 2})
    g = {x["groupName"]: x for x in up["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert g["h800"]["maxReplicas"] == 6


def test_unknown_pool_is_user_error():
    with pytest.raises(UserError, match="engine-tpu"):
        rayservice_patch(rayservice(), {"tpu": 1})


def test_status_fields_and_source_choice():
    from helpers import obs, settings, two_pools
    from moe_operator.api import MetricsSpec
    from moe_operator.api.status import MoEDeploymentStatus
    from moe_operator.autoscaling import decide
    from moe_operator.autoscaling.report import changed, last_decision, status_fields
    from moe_operator.autoscaling.sources import source_for
    from moe_operator.autoscaling.sources.prometheus import PrometheusSource
    from moe_operator.autoscaling.sources.scrape import ScrapeSource

    pools = two_pools()
    o = obs(0, 3000)
    d = decide(o, pools, settings(max_hourly_cost=30.0), None, 0)
    fields = status_fields(d, pools, o, {"h800": 1}, {"h800": "nvidia-h800", "ascend": "ascend-910b"}, budget_set=True)
    fields["lastDecisions"] = [last_decision(d, 1_700_000_000)]
    status = MoEDeploymentStatus.model_validate(fields)          # the api's own model accepts it
    assert status.budget_state == "Limited" and status.cost_per_hour <= 30.0
    assert status.last_decisions[0].time == "2023-11-14T22:13:20Z"
    assert fields["replicas"].startswith("ascend=0/")
    assert changed(None, d) and not changed(d.replicas, d)
    assert isinstance(
        source_for(MetricsSpec.model_validate({"prometheus": {"url": "http://p:9090"}}), "m"), PrometheusSource
    )
    from moe_operator.autoscaling.sources.prometheus import queries, vllm_queries

    prom = MetricsSpec.model_validate({"prometheus": {"url": "http://p:9090"}})
    assert source_for(prom, "m").q == queries("m") and source_for(prom, "m", engine="vllm").q == vllm_queries("m")
    assert isinstance(source_for(MetricsSpec.model_validate({}), "m", "http://127.0.0.1:8000/metrics"), ScrapeSource)
    assert source_for(MetricsSpec.model_validate({}), "m") is None


def test_torch_scale_then_rerender_changes_no_args():
    """After a scale, the reconcile's re-render (live worker-group sizes) is not drift, and the app's ``args`` are
    byte-for-byte the same: a changed ``args`` makes Ray Serve rebuild the app and replace every replica
    (docs/benchmarks/autoscaling-actuation.md)."""
    import copy
    from pathlib import Path

    from moe_operator.api import load_manifest
    from moe_operator.catalog import Catalog
    from moe_operator.handlers import drift
    from moe_operator.autoscaling.actuator import merge
    from moe_operator.render import Images
    from moe_operator.render.pipeline import plan_and_render

    m = load_manifest(Path(__file__).resolve().parents[2] / "examples" / "tiny-moe.yaml")

    def render(replicas=None):
        return plan_and_render(m.metadata.name, "default", m.spec, Catalog.default(), Images(), replicas).rayservice

    rs = render()
    live = merge(copy.deepcopy(rs), rayservice_patch(rs, {"cpu": 2}))
    again = render(drift.live_replicas(live))
    assert not drift.drifted(live, again, strict=False)
    apps = [yaml.safe_load(x["spec"]["serveConfigV2"])["applications"][0] for x in (rs, live, again)]
    assert apps[0]["args"] == apps[1]["args"] == apps[2]["args"]
    assert serve_replicas(again) == serve_replicas(live) == {"cpu": 2}


def test_vllm_app_with_two_llm_configs_gets_one_override_per_llm_server_deployment():
    """Each LLMConfig of a build_openai_app is its own Serve deployment, named from its model id; the actuator
    sizes each through its own override and leaves args alone (the app's code version: a change restarts all)."""
    def llm(model, pool, n):
        return {"model_loading_config": {"model_id": model}, "deployment_config": {"num_replicas": n},
                "placement_group_config": {"bundle_per_worker": {"GPU": 1, f"pool-{pool}": 0.001}}}

    app = {"name": "m", "import_path": "ray.serve.llm:build_openai_app",
           "args": {"llm_configs": [llm("org/a.1", "h100", 1), llm("b", "l40s", 2)]}}
    rs = {"spec": {"serveConfigV2": yaml.safe_dump({"applications": [app]})}}
    assert serve_replicas(rs) == {"h100": 1, "l40s": 2}
    patch = rayservice_patch(rs, {"h100": 3, "l40s": 2})
    new = yaml.safe_load(patch["spec"]["serveConfigV2"])["applications"][0]
    assert new["args"] == app["args"]
    assert new["deployments"] == [{"name": "LLMServer:org--a_1", "num_replicas": 3},
                                  {"name": "LLMServer:b", "num_replicas": 2}]
    assert serve_replicas(patch) == {"h100": 3, "l40s": 2}
    assert rayservice_patch(patch, {"h100": 3, "l40s": 2}) is None


def test_a_pool_at_zero_keeps_one_serve_replica_that_serve_accepts_and_reads_back_as_zero():
    """Serve's REST schema (what KubeRay submits serveConfigV2 through) refuses num_replicas 0: the pool's worker
    group goes to 0 pods, its Serve count stays 1 (an unplaceable replica), and the read-back says 0."""
    three = rayservice()
    three["spec"].update(rayservice_patch(three, {"h800": 3, "ascend": 2})["spec"])
    rs = three
    patch = rayservice_patch(rs, {"h800": 0, "ascend": 2})
    cfg = yaml.safe_load(patch["spec"]["serveConfigV2"])
    assert cfg["applications"][0]["deployments"][0]["num_replicas"] == 1
    g = {x["groupName"]: x for x in patch["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert g["h800"]["replicas"] == 0
    merged = {"spec": {**rs["spec"], **patch["spec"]}}
    assert serve_replicas(merged) == {"h800": 0, "ascend": 2}
    schema = pytest.importorskip("ray.serve.schema")
    schema.ServeDeploySchema.model_validate({"applications": cfg["applications"]})
    up = rayservice_patch(merged, {"h800": 1, "ascend": 2})   # waking: the group grows, Serve already asks 1
    assert "serveConfigV2" not in up["spec"]
    assert {x["groupName"]: x["replicas"] for x in up["spec"]["rayClusterConfig"]["workerGroupSpecs"]}["h800"] == 1
