"""The NetworkPolicy of one MoEDeployment: who may reach its Ray pods, and on which ports (docs/security.md).

Ray's own ports take no credential: the dashboard (8265) accepts job submissions (code execution on the cluster) and
the Serve REST API, GCS (6379) and the Ray client (10001) hold the cluster's state. KubeRay v1.5.0 can send no token
to the dashboard (docs/security.md, "Ray's ports"), so the network is the gate:

- the deployment's own Ray pods (every RayCluster of it, the pending one of an upgrade too): every port, since
  workers, raylets and object transfers use many ports;
- KubeRay's operator (its namespace AND its pod labels, one peer, so a tenant's look-alike pod in another namespace
  does not pass): the dashboard only, where it deploys serveConfigV2 and reads Serve's status;
- this operator, when it knows where it runs (``operator_namespace``, same AND rule): the dashboard only, where it
  reads which nodes hold Serve replicas before a scale-down deletes pods (handlers/ray_dashboard.py, read-only);
- anyone: Serve's HTTP port 8000 (the OpenAI API; the runtime admin API there needs the Bearer token);
- Ray's metrics port 8080 (KubeRay adds ``metrics-export-port`` to every Ray container): anyone, or one namespace
  (Prometheus's) when ``metrics_namespace`` is set.

Egress is not restricted. Pure: no kopf, no kubernetes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .rayservice import LABEL_DEPLOYMENT, MANAGED_BY

RAY_NODE_LABEL = {"ray.io/is-ray-node": "yes"}   # KubeRay's, on every Ray pod of every RayCluster
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"   # set by the API server on every namespace, not by tenants
DASHBOARD_PORT, SERVE_PORT, METRICS_PORT = 8265, 8000, 8080
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


@dataclass(frozen=True)
class PolicySettings:
    """Operator-wide: where KubeRay's operator runs, and who may scrape Ray's metrics (operator flags)."""

    kuberay_namespace: str = "ray-system"
    kuberay_pod_labels: dict[str, str] = field(default_factory=lambda: {"app.kubernetes.io/name": "kuberay-operator"})
    metrics_namespace: str = ""   # "": Ray's metrics port is open like Serve's
    operator_namespace: str = ""  # "": the operator runs outside the cluster (no peer; its dashboard reads fail)
    operator_pod_labels: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def parse_labels(text: str) -> dict[str, str]:
        """``k=v,k2=v2`` -> a label map; ValueError for an empty list or a malformed pair."""
        out: dict[str, str] = {}
        for pair in text.split(","):
            key, sep, value = pair.strip().partition("=")
            if not sep or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
                raise ValueError(f"not a label key=value: {pair!r}")
            out[key] = value
        return out


def _tcp(port: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port}]


def _namespace(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: name}}}


def _operator_peer(settings: PolicySettings) -> list[dict[str, Any]]:
    if not settings.operator_namespace:
        return []
    return [{**_namespace(settings.operator_namespace),
             "podSelector": {"matchLabels": dict(settings.operator_pod_labels)}}]


def render_networkpolicy(name: str, namespace: str, settings: PolicySettings,
                         labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The NetworkPolicy (networking.k8s.io/v1) named like the MoEDeployment ``name``; deterministic."""
    pods = {LABEL_DEPLOYMENT: name, **RAY_NODE_LABEL}
    kuberay = {**_namespace(settings.kuberay_namespace),
               "podSelector": {"matchLabels": dict(settings.kuberay_pod_labels)}}
    metrics: dict[str, Any] = {"ports": _tcp(METRICS_PORT)}
    if settings.metrics_namespace:
        metrics["from"] = [_namespace(settings.metrics_namespace)]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": dict(sorted({**MANAGED_BY, **(labels or {}), LABEL_DEPLOYMENT: name}.items()))},
        "spec": {
            "podSelector": {"matchLabels": pods},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": dict(pods)}}]},
                {"from": [kuberay, *_operator_peer(settings)], "ports": _tcp(DASHBOARD_PORT)},
                {"ports": _tcp(SERVE_PORT)},
                metrics,
            ],
        },
    }
