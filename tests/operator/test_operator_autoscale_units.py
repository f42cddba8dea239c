"""Offline parts of the operator's autoscaler (and the rebalancer's gauges): /metrics names (contracts section 6),
RayCluster patch, merge patch, peering priority; and that the cli parses --peering."""
from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import generate_latest

from moe_operator.autoscaling import actuator
from moe_operator.autoscaling.model import PoolModel, Settings
from moe_operator.autoscaling.policy import decide
from moe_operator.handlers import autoscale, leader, metrics
from moe_operator.planning.rebalance import RebalanceDecision
from moe_operator.operator_main import build_parser

CONTRACTS = Path(__file__).resolve().parents[2] / "docs" / "contracts.md"


def contract_metric_names() -> set[str]:
    text = CONTRACTS.read_text()
    section = text[text.index("## 6."):]
    end = section.find("\n## ", 5)
    section = section if end < 0 else section[:end]
    return set(re.findall(r"^\| `(moe_operator_[a-z_]+)`", section, re.M))


def test_every_contract_metric_is_exported_after_one_decision():
    names = contract_metric_names()
    assert len(names) >= 9, names
    pool = PoolModel(name="cpu", price_per_hour=0.05, capacity=100.0, min_replicas=1, max_replicas=3)
    d = decide(None, [pool], Settings(max_hourly_cost=1.0), None, 1000.0)   # held: metrics missing
    metrics.record_autoscale("ns", "m", d, 1.0)
    metrics.READY.labels("ns", "m", "cpu").set(1)
    metrics.DECISIONS.labels("ns", "m", "scale").inc()
    metrics.ERRORS.labels("ns", "m").inc()
    metrics.COST_PER_M.labels("ns", "m").set(0.1)
    metrics.record_rebalance("ns", "m", "cpu", RebalanceDecision(True, {}, 1.5, 1.02, 0.32, "skewed"), posted=True)
    text = generate_latest().decode()
    exported = set(re.findall(r"^(moe_operator_[a-z_]+)[{ ]", text, re.M))
    assert names <= exported, names - exported
    assert 'moe_operator_metrics_stale{name="m",namespace="ns"} 1.0' in text
    assert 'moe_operator_budget_headroom_dollars_per_hour{name="m",namespace="ns"} 0.95' in text


def test_raycluster_patch_sets_only_the_pools_groups():
    rc = {"spec": {"workerGroupSpecs": [{"groupName": "cpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 2},
                                        {"groupName": "gpu", "replicas": 4, "minReplicas": 0, "maxReplicas": 4}]}}
    assert actuator.raycluster_grow(rc, {"cpu": 3})
    assert rc["spec"]["workerGroupSpecs"][0] == {"groupName": "cpu", "replicas": 3, "minReplicas": 1, "maxReplicas": 3}
    assert rc["spec"]["workerGroupSpecs"][1]["replicas"] == 4
    assert not actuator.raycluster_grow(rc, {"cpu": 3})       # no change: no write


def test_merge_patch_replaces_lists_and_deletes_nulls():
    target = {"spec": {"a": 1, "groups": [{"x": 1}, {"y": 2}], "keep": {"k": 1}}}
    actuator.merge(target, {"spec": {"a": None, "groups": [{"x": 2}], "keep": {"n": 2}}})
    assert target == {"spec": {"groups": [{"x": 2}], "keep": {"k": 1, "n": 2}}}


def test_peering_priority_is_stable_and_differs_per_pod(monkeypatch):
    monkeypatch.setenv("POD_NAME", "moe-operator-abc")
    a = leader.own_priority()
    assert a == leader.own_priority() and a >= 1
    monkeypatch.setenv("POD_NAME", "moe-operator-def")
    assert leader.own_priority() != a
    assert leader.own_identity() == "moe-operator-def"


def test_peering_flag_parses():
    args = build_parser().parse_args(["--namespace", "a", "--peering", "moe-operator"])
    assert args.peering == "moe-operator" and args.metrics_port == 8080


class _Cluster:
    """The few kube calls ``autoscale.tick`` makes, on one in-memory RayService and MoEDeployment status."""

    def __init__(self, rayservice: dict, owner_uid: str | None = "u-1"):
        """``owner_uid``: the MoEDeployment that owns the RayService (None: nobody, as a stranger's would be)."""
        refs = [{"kind": "MoEDeployment", "name": "x", "uid": owner_uid}] if owner_uid else []
        rayservice.setdefault("metadata", {})["ownerReferences"] = refs
        self.rs, self.status, self.events = rayservice, {}, []

    def install(self, monkeypatch):
        from moe_operator.handlers import kube

        monkeypatch.setattr(kube, "get_rayservice", lambda ns, name: __import__("copy").deepcopy(self.rs))
        monkeypatch.setattr(kube, "active_raycluster", lambda ns, rs: None)
        monkeypatch.setattr(kube, "replace_with_retry", lambda ns, name, mutate: mutate(self.rs))
        monkeypatch.setattr(kube, "patch_moed_status", lambda ns, name, delta: self.status.update(delta))
        monkeypatch.setattr(kube, "post_event", lambda body, t, reason, msg: self.events.append(reason))


class _Source:
    """A source with data on its first call (as Prometheus has; the direct scrape holds once)."""

    last_error = None

    def __init__(self):
        self.generated = 0.0
        self.now = 0.0
        self.ready: dict[str, int] = {}     # moe_ready_replicas as the runtime would report it

    def observe(self):
        from moe_operator.autoscaling import Observation

        return Observation(observed_at=self.now, tokens_per_s={"generated": self.generated, "prompt": 0.0,
                                                                "cached_prompt": 0.0},
                           requests_per_s=1.0, queue_depth=0.0, ready=dict(self.ready))


def test_vllm_deployment_scaled_by_tick_and_a_restart_inside_the_window_keeps_replicas(monkeypatch):
    """Through the operator's tick: a vLLM app (examples/mixtral-8x7b-ascend.yaml) scales up; a restarted operator
    (memory cleared) seeing low load inside scaleDownStabilizationSeconds keeps the replicas, then scales down."""
    import copy
    import json

    import yaml

    from moe_operator.api import load_manifest
    from moe_operator.autoscaling.actuator import serve_replicas
    from moe_operator.catalog import Catalog
    from moe_operator.render import Images
    from moe_operator.render.pipeline import plan_and_render

    m = load_manifest(Path(__file__).resolve().parents[2] / "examples" / "mixtral-8x7b-ascend.yaml")
    rs = plan_and_render(m.metadata.name, "default", m.spec, Catalog.default(), Images()).rayservice
    cluster, source = _Cluster(rs), _Source()
    cluster.install(monkeypatch)
    monkeypatch.setattr(autoscale, "_source", lambda state, spec, model, engine="torch", scope=None: source)
    monkeypatch.setattr(autoscale, "STATES", {})
    body = {
        "apiVersion": "serving.moe-operator.io/v1alpha1",
        "kind": "MoEDeployment",
        "metadata": {
            "name": m.metadata.name,
            "namespace": "default",
            "generation": 1,
            "uid": "u-1",
            "annotations": {
                "autoscaling.moe-operator.io/capacity": json.dumps(
                    {"ascend": {"prefillTps": 10000, "decodeTps": 1000, "cachedPrefillTps": 100000}}
                )
            },
        },
        "spec": {
            **m.spec.model_dump(by_alias=True, exclude_none=True),
            "autoscaling": {
                "enabled": True,
                "intervalSeconds": 10,
                "targetUtilization": 0.7,
                "scaleDownStabilizationSeconds": 120,
                "budget": {"maxHourlyCost": 40},
            },
        },
    }

    def tick(t, generated):
        source.now, source.generated = t, generated
        autoscale.tick({**body, "status": copy.deepcopy(cluster.status)}, t)
        return serve_replicas(cluster.rs)["ascend"]

    assert tick(1000, 500) == 1
    n = tick(1010, 1800)                          # 1800 / 0.7 x 1.075 (mid-band) / 1000 -> 3 replicas
    assert n == 3 and cluster.events == ["ScaledUp"]
    app = yaml.safe_load(cluster.rs["spec"]["serveConfigV2"])["applications"][0]
    assert app["deployments"] == [{"name": "LLMServer:mixtral-8x7b", "num_replicas": 3,   # the override, not args
                                   "graceful_shutdown_timeout_s": 2078}]                  # (the render's drain)
    assert app["args"]["llm_configs"][0]["deployment_config"]["num_replicas"] == 1
    assert cluster.rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] == 3
    assert [p["desiredReplicas"] for p in cluster.status["pools"]] == [3]

    autoscale.STATES.clear()                                # the operator restarts; load drops at once
    assert [tick(t, 300) for t in (1020, 1030, 1060, 1100)] == [3, 3, 3, 3]
    assert tick(1150, 300) == 1 and cluster.events == ["ScaledUp", "ScaledDown"]   # a full window later

    # status lost too (e.g. the MoEDeployment re-created by a GitOps tool): the deployed replicas seed the window
    cluster.rs, cluster.status = copy.deepcopy(rs), {}
    assert cluster.rs["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    autoscale.STATES.clear()
    assert tick(2000, 1800) == 3
    autoscale.STATES.clear()
    cluster.status = {}
    assert tick(2010, 300) == 3


def test_ready_replicas_from_the_runtime_gauge_else_the_raycluster(monkeypatch):
    import copy

    from moe_operator.api import load_manifest
    from moe_operator.catalog import Catalog
    from moe_operator.handlers import kube
    from moe_operator.render import Images
    from moe_operator.render.pipeline import plan_and_render

    m = load_manifest(Path(__file__).resolve().parents[2] / "examples" / "qwen3-moe-mixed.yaml")
    rs = plan_and_render(m.metadata.name, "default", m.spec, Catalog.default(), Images()).rayservice
    cluster, source = _Cluster(rs), _Source()
    cluster.install(monkeypatch)
    rc = {"metadata": {"name": "rc"}, "spec": copy.deepcopy(rs["spec"]["rayClusterConfig"]),
          "status": {"readyWorkerReplicas": 2}}
    monkeypatch.setattr(kube, "active_raycluster", lambda ns, r: rc)
    monkeypatch.setattr(kube, "replace_raycluster_with_retry", lambda ns, name, mutate: mutate(rc))
    monkeypatch.setattr(autoscale, "_source", lambda state, spec, model, engine="torch", scope=None: source)
    monkeypatch.setattr(autoscale, "STATES", {})
    from moe_operator.autoscaling import step   # the tick's observe -> ready -> decide (shared with moectl up)

    seen, real_decide = [], step.decide
    monkeypatch.setattr(step, "decide", lambda obs, *a: (seen.append(dict(obs.ready)), real_decide(obs, *a))[1])
    body = {"apiVersion": "serving.moe-operator.io/v1alpha1", "kind": "MoEDeployment",
            "metadata": {"name": m.metadata.name, "namespace": "default", "generation": 1, "uid": "u-1"},
            "spec": {**m.spec.model_dump(by_alias=True, exclude_none=True),
                     "autoscaling": {"enabled": True, "intervalSeconds": 10}}}

    def ready_seen_by_policy(t, gauge):
        source.now, source.ready = t, gauge
        autoscale.tick({**body, "status": copy.deepcopy(cluster.status)}, t)
        return seen[-1]

    # no gauge: the RayCluster's group replicas (1 each; 2 ready workers cover both groups), when pods are unreadable
    from kubernetes.client.rest import ApiException

    def forbidden(ns, cluster):
        raise ApiException(status=403, reason="Forbidden")
    monkeypatch.setattr(kube, "ray_worker_pods", forbidden)
    assert ready_seen_by_policy(1000, {}) == {"h100": 1, "ascend": 1}
    # the runtime reports h100 (none serving yet, e.g. still loading): that wins; ascend keeps the fallback
    assert ready_seen_by_policy(1010, {"h100": 0, "other": 5}) == {"h100": 0, "ascend": 1}
    # with the pods readable, their readiness: the ascend pod was killed, so 0 ready there, not the spec's 1
    hosts = {g["groupName"]: int(g.get("numOfHosts") or 1) for g in rc["spec"]["workerGroupSpecs"]}

    def pods(ns, cluster):
        return [{"metadata": {"labels": {"ray.io/group": "h100", "ray.io/cluster": "rc"}},
                 "status": {"conditions": [{"type": "Ready", "status": "True"}]}}] * hosts["h100"]
    monkeypatch.setattr(kube, "ray_worker_pods", pods)
    assert ready_seen_by_policy(1020, {}) == {"h100": 1, "ascend": 0}


def test_a_rayservice_it_does_not_own_is_never_scaled(monkeypatch):
    """A stranger's RayService of the same name (issue 14 item 11): the autoscaler writes nothing to it."""
    from moe_operator.api import load_manifest
    from moe_operator.catalog import Catalog
    from moe_operator.render import Images
    from moe_operator.render.pipeline import plan_and_render

    m = load_manifest(Path(__file__).resolve().parents[2] / "examples" / "mixtral-8x7b-ascend.yaml")
    rs = plan_and_render(m.metadata.name, "default", m.spec, Catalog.default(), Images()).rayservice
    cluster, source = _Cluster(rs, owner_uid="someone-else"), _Source()
    cluster.install(monkeypatch)
    writes = []
    monkeypatch.setattr("moe_operator.handlers.kube.replace_with_retry", lambda *a: writes.append(a))
    monkeypatch.setattr(autoscale, "_source", lambda state, spec, model, engine="torch", scope=None: source)
    monkeypatch.setattr(autoscale, "STATES", {})
    body = {"apiVersion": "serving.moe-operator.io/v1alpha1", "kind": "MoEDeployment",
            "metadata": {"name": m.metadata.name, "namespace": "default", "generation": 1, "uid": "u-1"},
            "spec": {**m.spec.model_dump(by_alias=True, exclude_none=True),
                     "autoscaling": {"enabled": True, "intervalSeconds": 10, "targetUtilization": 0.7}}}
    for t, generated in ((1000, 500), (1010, 5000), (1020, 5000)):
        source.now, source.generated = t, generated
        autoscale.tick(dict(body), t)
    assert writes == [] and cluster.events == [] and cluster.status == {}


def test_the_tick_scopes_prometheus_to_its_own_namespace_and_deployment(monkeypatch):
    """Two namespaces may both serve model "chat" (issue 14 item 9): the operator's queries carry the namespace, the
    target label the chart's PodMonitor attaches."""
    from moe_operator.api.spec import MetricsSpec
    from moe_operator.autoscaling.sources.prometheus import promql_string

    state = autoscale.State()
    spec = MetricsSpec.model_validate({"prometheus": {"url": "http://prometheus.monitoring:9090"}})
    src = autoscale._source(state, spec, "chat", "torch", {"namespace": "team-a"})
    for q in src.q.values():
        assert f"namespace={promql_string('team-a')}" in q, q
    from moe_operator.api import load_manifest
    from moe_operator.catalog import Catalog
    from moe_operator.render import Images
    from moe_operator.render.pipeline import plan_and_render

    m = load_manifest(Path(__file__).resolve().parents[2] / "examples" / "mixtral-8x7b-ascend.yaml")
    _Cluster(plan_and_render(m.metadata.name, "team-a", m.spec, Catalog.default(), Images()).rayservice).install(
        monkeypatch)
    seen = []
    monkeypatch.setattr(autoscale, "_source", lambda state, spec, model, engine="torch", scope=None: seen.append(scope))
    monkeypatch.setattr(autoscale, "STATES", {})
    body = {"apiVersion": "serving.moe-operator.io/v1alpha1", "kind": "MoEDeployment",
            "metadata": {"name": m.metadata.name, "namespace": "team-a", "generation": 1, "uid": "u-1"},
            "spec": {**m.spec.model_dump(by_alias=True, exclude_none=True), "autoscaling": {"enabled": True}}}
    autoscale.tick(body, 1000.0)
    assert seen == [{"namespace": "team-a"}]
