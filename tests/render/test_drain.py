"""Drain-aware scale-down (issue 13): the engines' graceful shutdown is sized from the longest request the spec
allows, rendered where a change of it replaces no replica and no cluster, and worker pods outlive every drain."""
from __future__ import annotations

import pytest
import yaml

from moe_operator.api import load_manifest
from moe_operator.catalog import Catalog
from moe_operator.render import Images, render_for
from moe_operator.render.drain import (DEFAULT_SECONDS_PER_TOKEN, MARGIN_S, MAX_DRAIN_S, POD_MARGIN_S,
                                       WORKER_TERMINATION_GRACE_S, drain_timeout_s)

from test_golden import EXAMPLES
from test_rayservice import spec
from test_upgrade_safety import kuberay_hash


def test_drain_is_the_longest_request_at_the_tpot_target_plus_margin_and_bounded():
    assert drain_timeout_s(2048, 0.1) == 286                    # 2048 x 0.1 s x 1.25 + 30 (examples/tiny-moe.yaml)
    assert drain_timeout_s(2048) == drain_timeout_s(2048, DEFAULT_SECONDS_PER_TOKEN) == 542
    assert drain_timeout_s(0, 0.1) == MARGIN_S
    assert drain_timeout_s(1_048_576, 60) == drain_timeout_s(32768, 0.1) == MAX_DRAIN_S   # DeepSeek-V3: an hour
    assert drain_timeout_s(4096, 0.05) < drain_timeout_s(4096, 0.1) < drain_timeout_s(8192, 0.1)
    assert isinstance(drain_timeout_s(1000, 0.0333), int)
    for bad in ((100, 0.0), (100, -1.0), (-1, 0.1)):
        with pytest.raises(ValueError):
            drain_timeout_s(*bad)


def test_the_runtime_copy_agrees_with_the_operator():
    rt = pytest.importorskip("moe_runtime.drain")
    for tokens in (0, 8, 128, 512, 2048, 4096, 32768, 1_048_576):
        for per_token in (None, 0.001, 0.03, 0.1, 0.2, 1.0, 60.0):
            assert rt.drain_timeout_s(tokens, per_token) == drain_timeout_s(tokens, per_token), (tokens, per_token)


def _engine_deployments(rs: dict) -> list[dict]:
    """The Serve deployments that hold engine replicas: torch ``engine-<pool>``, vLLM LLM server overrides."""
    out = []
    for app in yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]:
        out += [d for d in app["deployments"] if d["name"] != "OpenAIIngress"]
    return out


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_engine_deployment_drains_for_the_spec_and_no_pod_is_killed_sooner(example):
    m = load_manifest(example)
    rs = render_for(m.metadata.name, "ns", m.spec, Catalog.default(), None, Images())
    a = m.spec.autoscaling
    want = drain_timeout_s(m.spec.model.max_context_tokens, a.slo.tpot_p95_seconds if a.enabled else None)
    deps = _engine_deployments(rs)
    assert deps and all(d["graceful_shutdown_timeout_s"] == want for d in deps), deps
    for app in yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]:
        assert "graceful_shutdown_timeout_s" not in str(app["args"])   # never in args: a change there replaces all
    groups = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    for g in groups:
        assert g["template"]["spec"]["terminationGracePeriodSeconds"] == WORKER_TERMINATION_GRACE_S
    assert WORKER_TERMINATION_GRACE_S >= MAX_DRAIN_S + POD_MARGIN_S >= want + POD_MARGIN_S


def test_the_tpot_target_counts_only_while_the_autoscaler_holds_it():
    m = load_manifest(next(p for p in EXAMPLES if p.stem == "tiny-moe"))
    on = m.spec
    off = on.model_copy(update={"autoscaling": on.autoscaling.model_copy(update={"enabled": False})})
    slower = on.model_copy(update={"autoscaling": on.autoscaling.model_copy(
        update={"slo": on.autoscaling.slo.model_copy(update={"tpot_p95_seconds": 0.05})})})
    got = {name: _engine_deployments(render_for("t", "ns", s, Catalog.default(), None, Images()))[0]
           ["graceful_shutdown_timeout_s"] for name, s in (("on", on), ("off", off), ("slower", slower))}
    assert got == {"on": drain_timeout_s(2048, 0.1), "off": drain_timeout_s(2048),
                   "slower": drain_timeout_s(2048, 0.05)}


def test_a_drain_change_keeps_the_cluster_and_the_app_code_version():
    """An SLO edit moves only the deployments' graceful_shutdown_timeout_s: KubeRay's cluster hash (the pod template
    included) and the apps' args (Serve's code version) stay as they were."""
    base = spec()
    a = render_for("m", "ns", base, Catalog.default(), None, Images())
    s = base.model_copy(update={"autoscaling": base.autoscaling.model_copy(
        update={"slo": base.autoscaling.slo.model_copy(update={"tpot_p95_seconds": 0.05})})})
    b = render_for("m", "ns", s, Catalog.default(), None, Images())
    assert [d["graceful_shutdown_timeout_s"] for d in _engine_deployments(a)] != \
        [d["graceful_shutdown_timeout_s"] for d in _engine_deployments(b)]
    assert kuberay_hash(a["spec"]["rayClusterConfig"]) == kuberay_hash(b["spec"]["rayClusterConfig"])
    args = [[app["args"] for app in yaml.safe_load(x["spec"]["serveConfigV2"])["applications"]] for x in (a, b)]
    assert args[0] == args[1]


def test_serve_applies_a_graceful_shutdown_change_without_restarting_replicas():
    """In the installed Ray Serve, graceful_shutdown_timeout_s / _wait_loop_s are in-place options: two versions of
    a deployment that differ only there do not restart replicas (DeploymentVersion.requires_actor_restart), and
    the rendered configs validate as Serve deploy configs."""
    try:
        from ray.serve._private.config import DeploymentConfig
        from ray.serve._private.version import DeploymentVersion
        from ray.serve.schema import ServeDeploySchema
    except ImportError as exc:
        from require import need

        need("ray[serve]", str(exc))
    old = DeploymentVersion("v1", DeploymentConfig(num_replicas=3, graceful_shutdown_timeout_s=10), {"num_cpus": 1})
    new = DeploymentVersion("v1", DeploymentConfig(num_replicas=1, graceful_shutdown_timeout_s=286,
                                                   graceful_shutdown_wait_loop_s=1), {"num_cpus": 1})
    assert old != new and not old.requires_actor_restart(new)
    assert DeploymentConfig().graceful_shutdown_timeout_s == 20   # Serve's default, which the engines replace
    for example in EXAMPLES:
        m = load_manifest(example)
        rs = render_for(m.metadata.name, "ns", m.spec, Catalog.default(), None, Images())
        ServeDeploySchema.model_validate(yaml.safe_load(rs["spec"]["serveConfigV2"]))
