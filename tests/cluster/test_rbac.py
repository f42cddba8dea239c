"""RBAC is real: a ServiceAccount token gets 403 listing pods without a binding and 200 with a Role."""
from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request

from kuberay_objects import wait_for


def _list_pods(cluster, namespace: str, token: str) -> int:
    """HTTP status of GET /api/v1/namespaces/<ns>/pods with only a bearer token (no client certificate)."""
    cfg = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    c = cfg["clusters"][0]["cluster"]
    if "certificate-authority-data" in c:
        ctx = ssl.create_default_context(cadata=base64.b64decode(c["certificate-authority-data"]).decode())
    else:
        ctx = ssl.create_default_context(cafile=c["certificate-authority"])
    req = urllib.request.Request(f"{c['server']}/api/v1/namespaces/{namespace}/pods",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_service_account_token_needs_a_role(cluster, namespace):
    cluster.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    # TokenRequest API: signed by the apiserver's service-account key.
    token = cluster.kubectl("create", "token", "reader", "-n", namespace, "--duration=10m").stdout.strip()
    assert token.count(".") == 2  # a JWT

    assert _list_pods(cluster, namespace, token) == 403
    assert _list_pods(cluster, namespace, "not-a-token") == 401

    cluster.kubectl("create", "role", "pod-reader", "-n", namespace, "--verb=get,list", "--resource=pods")
    cluster.kubectl("create", "rolebinding", "reader", "-n", namespace, "--role=pod-reader",
                    f"--serviceaccount={namespace}:reader")
    wait_for("the RoleBinding to take effect", lambda: _list_pods(cluster, namespace, token) == 200, timeout=20)
    # The Role is namespaced: another namespace stays forbidden.
    assert _list_pods(cluster, namespace="default", token=token) == 403
