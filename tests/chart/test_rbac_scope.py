"""Where the chart lets the operator touch Secrets and NetworkPolicies (issue 14 items 14 and 15), from `helm template`.

Item 15: with rebalancing on (the default) the ClusterRole granted get/create on every Secret of the cluster. Now
Secrets are granted only by Roles, in `rebalance.namespaces` (or, in namespaced mode, the watched namespaces).
Item 14: the operator writes a NetworkPolicy per MoEDeployment, so it needs networkpolicies get/create/update where
it serves, and the Deployment passes the KubeRay identity the policy admits to Ray's dashboard.
"""
from __future__ import annotations

import pytest

from chart_tools import VALUES_DIR, by_kind, render

SECRET_RULE = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]}
NETPOL_RULE = {
    "apiGroups": ["networking.k8s.io"],
    "resources": ["networkpolicies"],
    "verbs": ["get", "create", "update"],
}
DEFAULT, NAMESPACED = VALUES_DIR / "default.yaml", VALUES_DIR / "namespaced.yaml"


def _rules(objs: list[dict], kind: str) -> dict[tuple[str | None, str], list[dict]]:
    return {(o["metadata"].get("namespace"), o["metadata"]["name"]): o["rules"] for o in by_kind(objs, kind)}


def _grants_secrets(rules: list[dict]) -> bool:
    return any("secrets" in r["resources"] for r in rules)


def _secret_roles(objs: list[dict]) -> dict[str, list[dict]]:
    """namespace -> rules of every Role there that mentions Secrets."""
    return {ns: rules for (ns, _), rules in _rules(objs, "Role").items() if _grants_secrets(rules)}


def _args(objs: list[dict]) -> list[str]:
    (dep,) = by_kind(objs, "Deployment")
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_cluster_mode_grants_no_secret_cluster_wide_even_with_rebalancing_on(helm_bin):
    objs = render(DEFAULT)
    cluster_roles = _rules(objs, "ClusterRole")
    assert cluster_roles, "cluster mode has its ClusterRole"
    for name, rules in cluster_roles.items():
        assert not _grants_secrets(rules), (name, rules)
    assert _secret_roles(objs) == {}   # no namespace listed: no Secret rights at all


def test_cluster_mode_grants_secrets_by_a_role_in_each_listed_namespace_only(helm_bin):
    objs = render(DEFAULT, set_values=("rebalance.namespaces={team-a,team-b}",))
    assert not any(_grants_secrets(r) for r in _rules(objs, "ClusterRole").values())
    roles = _secret_roles(objs)
    assert roles == {"team-a": [SECRET_RULE], "team-b": [SECRET_RULE]}   # the Role holds nothing else
    bindings = {b["metadata"]["namespace"]: b for b in by_kind(objs, "RoleBinding")
                if b["metadata"]["name"].endswith("-admin-token")}
    assert set(bindings) == {"team-a", "team-b"}
    for b in bindings.values():
        assert b["roleRef"]["kind"] == "Role" and b["roleRef"]["name"] == b["metadata"]["name"]
        assert [(s["kind"], s["namespace"]) for s in b["subjects"]] == [("ServiceAccount", "moe-system")]


def test_namespaced_mode_grants_secrets_in_the_watched_namespaces_or_a_listed_subset(helm_bin):
    objs = render(NAMESPACED)
    assert not by_kind(objs, "ClusterRole")
    assert _secret_roles(objs) == {"team-a": [SECRET_RULE], "team-b": [SECRET_RULE]}
    assert _secret_roles(render(NAMESPACED, set_values=("rebalance.namespaces={team-b}",))) == {"team-b": [SECRET_RULE]}


def test_a_rebalance_namespace_outside_the_watched_ones_is_refused(helm_bin):
    with pytest.raises(AssertionError, match="team-z is not in watchNamespaces"):
        render(NAMESPACED, set_values=("rebalance.namespaces={team-z}",))


@pytest.mark.parametrize("values", [DEFAULT, NAMESPACED], ids=lambda p: p.stem)
def test_rebalancing_off_grants_no_secrets_anywhere(helm_bin, values):
    objs = render(values, set_values=("rebalance.enabled=false", "rebalance.namespaces={team-a}"))
    for kind in ("Role", "ClusterRole"):
        assert not any(_grants_secrets(r) for r in _rules(objs, kind).values())


def test_network_policies_are_granted_where_the_operator_serves_and_the_flags_name_kuberay(helm_bin):
    objs = render(DEFAULT)
    (cluster_rules,) = _rules(objs, "ClusterRole").values()
    assert NETPOL_RULE in cluster_rules
    args = _args(objs)
    assert "--kuberay-namespace=ray-system" in args
    assert "--kuberay-pod-labels=app.kubernetes.io/name=kuberay-operator" in args
    assert "--no-network-policy" not in args and not any(a.startswith("--metrics-namespace") for a in args)
    # the operator's own pods are the dashboard peer the scale-down needs: the flags must select them
    dep = next(o for o in objs if o["kind"] == "Deployment")
    own = dict(kv.split("=", 1) for a in args if a.startswith("--operator-pod-labels=")
               for kv in a.split("=", 1)[1].split(","))
    assert own and own.items() <= dep["spec"]["template"]["metadata"]["labels"].items(), (own, dep)
    assert f"--operator-namespace={dep['metadata']['namespace']}" in args

    ns = render(NAMESPACED, set_values=("networkPolicy.metricsNamespace=monitoring",
                                        "networkPolicy.kuberay.podLabels.tier=control"))
    for team in ("team-a", "team-b"):   # namespaced mode: in each watched namespace's Role, nothing cluster-wide
        role = next(r for (n, name), r in _rules(ns, "Role").items() if n == team and not name.endswith("-admin-token"))
        assert NETPOL_RULE in role
    args = _args(ns)
    assert "--metrics-namespace=monitoring" in args
    assert "--kuberay-pod-labels=app.kubernetes.io/name=kuberay-operator,tier=control" in args


def test_network_policy_off_passes_the_flag_and_grants_nothing(helm_bin):
    objs = render(DEFAULT, set_values=("networkPolicy.enabled=false",))
    assert "--no-network-policy" in _args(objs)
    assert not any(a.startswith("--kuberay") for a in _args(objs))
    for kind in ("Role", "ClusterRole"):
        for rules in _rules(objs, kind).values():
            assert not any("networkpolicies" in r["resources"] for r in rules)


def test_the_operator_parses_the_network_policy_flags_the_chart_passes(helm_bin):
    from moe_operator.operator_main import build_parser, policy_settings

    args = _args(render(DEFAULT, set_values=("networkPolicy.metricsNamespace=monitoring",)))
    settings = policy_settings(build_parser().parse_args(args))
    assert settings is not None and settings.kuberay_namespace == "ray-system"
    assert settings.kuberay_pod_labels == {"app.kubernetes.io/name": "kuberay-operator"}
    assert settings.metrics_namespace == "monitoring"
