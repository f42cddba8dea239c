"""The NetworkPolicy rendered per MoEDeployment (issue 14 item 14): who may reach the Ray pods, on which ports.

Ray's dashboard (8265: job submission = code execution) and GCS (6379) take no credential KubeRay v1.5.0 could send,
so the network is the only gate: the deployment's own pods on every port, KubeRay's operator pods (namespace AND pod
labels) on the dashboard only, Serve (8000) and Ray's metrics port (8080) from clients.
"""
from __future__ import annotations

from moe_operator.render.networkpolicy import PolicySettings, render_networkpolicy
from moe_operator.render.rayservice import LABEL_DEPLOYMENT

SETTINGS = PolicySettings(kuberay_namespace="ray-system",
                          kuberay_pod_labels={"app.kubernetes.io/name": "kuberay-operator"})


def _ports(rule: dict) -> set[int]:
    return {p["port"] for p in rule.get("ports") or []}


def _rule_with_ports(policy: dict, ports: set[int]) -> dict:
    rules = [r for r in policy["spec"]["ingress"] if _ports(r) == ports]
    assert len(rules) == 1, policy["spec"]["ingress"]
    return rules[0]


def test_it_selects_every_ray_pod_of_the_deployment_whatever_the_raycluster():
    np = render_networkpolicy("m1", "team-a", SETTINGS)
    assert np["apiVersion"] == "networking.k8s.io/v1" and np["kind"] == "NetworkPolicy"
    assert np["metadata"]["name"] == "m1" and np["metadata"]["namespace"] == "team-a"
    selector = np["spec"]["podSelector"]["matchLabels"]
    # our label plus KubeRay's cluster-independent one: the pending RayCluster of an upgrade is covered too
    assert selector == {LABEL_DEPLOYMENT: "m1", "ray.io/is-ray-node": "yes"}
    assert not any(k == "ray.io/cluster" for k in selector)
    assert np["spec"]["policyTypes"] == ["Ingress"]   # egress unrestricted


def test_the_deployments_own_pods_reach_every_port():
    np = render_networkpolicy("m1", "team-a", SETTINGS)
    own = [r for r in np["spec"]["ingress"] if "ports" not in r]
    assert own == [{"from": [{"podSelector": {"matchLabels": {LABEL_DEPLOYMENT: "m1", "ray.io/is-ray-node": "yes"}}}]}]


def test_kuberay_reaches_the_dashboard_only_and_is_named_by_namespace_and_pod_labels():
    np = render_networkpolicy("m1", "team-a", SETTINGS)
    rule = _rule_with_ports(np, {8265})
    # one peer with both selectors (AND): a tenant's pod with KubeRay's labels in its own namespace is not admitted
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ray-system"}},
                             "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}]
    for r in np["spec"]["ingress"]:
        if 8265 in _ports(r) or 6379 in _ports(r) or 10001 in _ports(r):
            assert r is rule
    assert all(p["protocol"] == "TCP" for r in np["spec"]["ingress"] for p in r.get("ports") or [])


def test_the_operator_reaches_the_dashboard_when_it_knows_its_namespace_and_labels():
    """The scale-down reads which nodes hold Serve replicas from the dashboard (handlers/ray_dashboard.py)."""
    import dataclasses

    own = dataclasses.replace(SETTINGS, operator_namespace="moe-system",
                              operator_pod_labels={"app.kubernetes.io/name": "moe-operator"})
    rule = _rule_with_ports(render_networkpolicy("m1", "team-a", own), {8265})
    assert rule["from"][1] == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "moe-system"}},
                               "podSelector": {"matchLabels": {"app.kubernetes.io/name": "moe-operator"}}}
    assert len(_rule_with_ports(render_networkpolicy("m1", "team-a", SETTINGS), {8265})["from"]) == 1


def test_gcs_and_the_client_port_are_not_open_to_anyone_else():
    np = render_networkpolicy("m1", "team-a", SETTINGS)
    open_ports = set().union(*(_ports(r) for r in np["spec"]["ingress"] if "ports" in r))
    assert open_ports == {8265, 8000, 8080}
    assert 6379 not in open_ports and 10001 not in open_ports and 52365 not in open_ports


def test_serve_is_open_to_clients_and_metrics_to_anyone_unless_a_prometheus_namespace_is_set():
    np = render_networkpolicy("m1", "team-a", SETTINGS)
    assert "from" not in _rule_with_ports(np, {8000})
    assert "from" not in _rule_with_ports(np, {8080})
    scoped = render_networkpolicy("m1", "team-a", PolicySettings(
        kuberay_namespace="kuberay", kuberay_pod_labels={"app": "kuberay"}, metrics_namespace="monitoring"))
    assert _rule_with_ports(scoped, {8080})["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    assert _rule_with_ports(scoped, {8265})["from"][0]["podSelector"] == {"matchLabels": {"app": "kuberay"}}


def test_labels_are_ours_and_the_render_is_deterministic():
    a = render_networkpolicy("m1", "team-a", SETTINGS, labels={"team": "x"})
    assert a == render_networkpolicy("m1", "team-a", SETTINGS, labels={"team": "x"})
    assert a["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "moe-operator", LABEL_DEPLOYMENT: "m1",
                                       "team": "x"}


def test_settings_parse_label_lists():
    assert PolicySettings.parse_labels("a=b,c.io/d=e") == {"a": "b", "c.io/d": "e"}
    for bad in ("", "a", "a=b,,", "=b"):
        try:
            PolicySettings.parse_labels(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} accepted")
