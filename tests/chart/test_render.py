"""`helm lint` and `helm template`: goldens per values file, and what the rendered objects must say.

Goldens live in tests/chart/golden/<values file stem>.yaml; after an intended chart change regenerate them with
``MOE_UPDATE_GOLDENS=1 .venv/bin/python -m pytest tests/chart/test_render.py`` and review the diff.
"""
from __future__ import annotations

import os

import pytest
import yaml

from chart_tools import CHART, GOLDEN_DIR, RELEASE_NAMESPACE, VALUES_DIR, by_kind, helm, render, template_text

VALUES = sorted(VALUES_DIR.glob("*.yaml"))
#: Pod Security "restricted" (v1.29+): what each container and the pod must say.
RESTRICTED_VOLUME_TYPES = {"configMap", "emptyDir", "projected", "secret", "downwardAPI", "persistentVolumeClaim",
                           "ephemeral", "csi"}


def test_helm_lint_passes(helm_bin):
    for values in VALUES:
        proc = helm("lint", str(CHART), "--strict", "-f", str(values), "--namespace", RELEASE_NAMESPACE, check=False)
        assert proc.returncode == 0, f"{values.name}:\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_template_matches_golden(helm_bin, values):
    text = template_text(values)
    golden = GOLDEN_DIR / f"{values.stem}.yaml"
    if os.environ.get("MOE_UPDATE_GOLDENS"):
        golden.write_text(text)
    assert golden.exists(), f"no golden {golden}: run with MOE_UPDATE_GOLDENS=1"
    assert text == golden.read_text(), f"helm template with {values.name} differs from {golden.name}"


def test_schema_errors_stop_helm(helm_bin):
    proc = helm("template", "x", str(CHART), "--set", "catalog.ascendResourceScheme=volcano", check=False)
    assert proc.returncode != 0 and "ascendResourceScheme" in proc.stderr


def pods_of(objs):
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in by_kind(objs, "Deployment")]


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_pods_meet_restricted_pod_security(helm_bin, values):
    objs = render(values)
    pods = pods_of(objs)
    assert len(pods) == 1
    for name, pod in pods:
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault"
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        for vol in pod.get("volumes", []):
            assert set(vol) - {"name"} <= RESTRICTED_VOLUME_TYPES, vol
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
            assert sc["readOnlyRootFilesystem"] is True and sc.get("privileged") is not True
            assert not any(p.get("hostPort") for p in c.get("ports", []))
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert mounts["/tmp"] == "tmp"  # the one writable path, an emptyDir
            assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_rbac_has_no_wildcards_and_secrets_only_get_create(helm_bin, values):
    roles = [o for o in render(values) if o["kind"] in {"Role", "ClusterRole"}]
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(key, []), (role["metadata"]["name"], rule)
            assert "pods/exec" not in rule["resources"]
            if "secrets" in rule["resources"]:   # the runtime admin token (spec.rebalance): read and create only
                assert rule["resources"] == ["secrets"] and rule["verbs"] == ["get", "create"], rule
            assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
            assert "nonResourceURLs" not in rule


# cluster mode grants Secrets only in listed namespaces (issue 14 item 15): list one to see the rule
@pytest.mark.parametrize("values, extra", [("default.yaml", ("rebalance.namespaces={team-a}",)),
                                           ("namespaced.yaml", ())])
def test_secrets_rule_only_with_rebalance_enabled(helm_bin, values, extra):
    def secret_rules(objs):
        return [r for o in objs if o["kind"] in {"Role", "ClusterRole"} for r in o["rules"]
                if "secrets" in r["resources"]]

    def other_roles(objs):
        return [o for o in objs if o["kind"] in {"Role", "ClusterRole"}
                and not o["metadata"]["name"].endswith("-admin-token")]

    on = render(VALUES_DIR / values, set_values=extra)
    off = render(VALUES_DIR / values, set_values=(*extra, "rebalance.enabled=false"))
    assert secret_rules(on) and all(r["verbs"] == ["get", "create"] for r in secret_rules(on))
    assert secret_rules(off) == []
    # the Secrets live in their own Roles: the rest of the rules stay as they are
    assert not secret_rules(other_roles(on)) and other_roles(on) == other_roles(off)


def test_cluster_mode_has_one_cluster_role_and_no_workload_roles(helm_bin):
    objs = render(VALUES_DIR / "default.yaml")
    assert len(by_kind(objs, "ClusterRole")) == 1 and len(by_kind(objs, "ClusterRoleBinding")) == 1
    roles = by_kind(objs, "Role")
    assert [r["metadata"]["name"] for r in roles] == ["moe-moe-operator-catalog"]  # only the catalog ConfigMap
    assert roles[0]["rules"] == [{"apiGroups": [""], "resources": ["configmaps"],
                                  "resourceNames": ["moe-moe-operator-catalog"], "verbs": ["get"]}]
    args = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in args and not any(a.startswith("--namespace") for a in args)
    assert [p["kind"] for p in objs if p["apiVersion"] == "kopf.dev/v1"] == ["ClusterKopfPeering"]


def test_namespaced_mode_has_roles_per_namespace_and_nothing_cluster_wide(helm_bin):
    objs = render(VALUES_DIR / "namespaced.yaml")
    assert not by_kind(objs, "ClusterRole") and not by_kind(objs, "ClusterRoleBinding")
    workload = {r["metadata"]["namespace"] for r in by_kind(objs, "Role") if "catalog" not in r["metadata"]["name"]}
    assert workload == {"team-a", "team-b"}
    bindings = by_kind(objs, "RoleBinding")
    assert all(b["subjects"] == [{"kind": "ServiceAccount", "name": "moe-moe-operator",
                                  "namespace": RELEASE_NAMESPACE}] for b in bindings)
    args = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]
    peerings = [(p["kind"], p["metadata"]["namespace"], p["metadata"]["name"]) for p in objs
                if p["apiVersion"] == "kopf.dev/v1"]
    assert peerings == [("KopfPeering", "team-a", "moe-team"), ("KopfPeering", "team-b", "moe-team")]
    assert not by_kind(objs, "PodDisruptionBudget")  # one replica


def test_operator_accepts_every_flag_the_chart_passes(helm_bin):
    """The Deployment's args parse with moe-operator's own argument parser (catches a renamed or missing flag)."""
    from moe_operator.operator_main import build_parser

    rejected = []
    for values in VALUES:
        container = by_kind(render(values), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
        try:
            build_parser().parse_args(container["args"])
        except SystemExit:
            rejected.append(f"{values.name}: {container['args']}")
    assert not rejected, ("moe-operator rejects the chart's args (the chart needs `--peering NAME`: docs/install.md, "
                          "'Two replicas'):\n" + "\n".join(rejected))


def test_catalog_configmap_is_what_the_operator_reads(helm_bin):
    """The rendered catalog ConfigMap goes through Catalog.with_overrides, the operator's own parser."""
    from moe_operator.catalog import Catalog

    objs = render(VALUES_DIR / "catalog.yaml")
    cm = next(o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-catalog"))
    catalog = Catalog.default().with_overrides(cm)
    assert catalog.ascend_scheme == "hami"
    assert catalog.price("nvidia-h800") == 1.85 and catalog.price("ascend-910b") == 1.1
    assert catalog.get("nvidia-l4").description == "NVIDIA L4 24 GB on our on-prem racks"
    assert catalog.resource_name("ascend-910b") != Catalog.default().resource_name("ascend-910b")
    args = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--catalog-configmap={RELEASE_NAMESPACE}/{cm['metadata']['name']}" in args
    # The defaults render a ConfigMap that changes nothing but states the scheme.
    default_cm = next(o for o in by_kind(render(VALUES_DIR / "default.yaml"), "ConfigMap")
                      if o["metadata"]["name"].endswith("-catalog"))
    assert Catalog.default().with_overrides(default_cm).price("nvidia-h800") == Catalog.default().price("nvidia-h800")


def test_images_configmap_is_what_the_operator_reads(helm_bin):
    from moe_operator.render.images import Images

    objs = render(VALUES_DIR / "catalog.yaml")
    cm = next(o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-images"))
    images = Images.from_mapping(yaml.safe_load(cm["data"]["images.yaml"]))
    assert images.torch_nvidia == "registry.example.com/mirror/moe-runtime:0.1.0-cuda"
    assert images.vllm_huawei == "registry.example.com/mirror/vllm-ascend:0.1.0"
    assert images.vllm_ray_version == "2.60.0" and images.ray_version_for("vllm") == "2.60.0"
    assert images.torch_cpu == Images().torch_cpu and images.ray_version == Images().ray_version
    container = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "images")
    assert f"--images={mount['mountPath']}/images.yaml" in container["args"]
    assert container["image"].startswith("registry.example.com/mirror/moe-operator@sha256:")


def test_monitoring_bundle_is_off_by_default_and_complete_when_on(helm_bin):
    kinds = {o["kind"] for o in render(VALUES_DIR / "default.yaml")}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    objs = render(VALUES_DIR / "monitoring.yaml")
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= {o["kind"] for o in objs}
    rule = by_kind(objs, "PrometheusRule")[0]
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    dash = next(o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard"))
    import json

    assert json.loads(dash["data"]["moe-operator.json"])["uid"] == "moe-operator"
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    sm = by_kind(objs, "ServiceMonitor")[0]
    svc = next(o for o in by_kind(objs, "Service") if o["metadata"]["name"].endswith("-metrics"))
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["honorLabels"] is True


def test_standalone_single_replica_has_no_peering_at_all(helm_bin):
    objs = render(VALUES_DIR / "standalone.yaml")
    assert not [o for o in objs if o["apiVersion"] == "kopf.dev/v1"]
    args = by_kind(objs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [a for a in args if a.startswith("--peering")]
    rules = [rule for role in by_kind(objs, "ClusterRole") for rule in role["rules"]]
    assert rules and not [r for r in rules if "kopf.dev" in r["apiGroups"]]
    with_peering = [rule for role in by_kind(render(VALUES_DIR / "default.yaml"), "ClusterRole")
                    for rule in role["rules"] if "kopf.dev" in rule["apiGroups"]]
    assert len(with_peering) == 2
