"""The chart on the real control plane: install, Pod Security `restricted`, least-privilege RBAC, uninstall.

Every test installs its own release into fresh namespaces (cluster-scoped names carry the release name, so
releases never collide) and uninstalls it. The operator image is not pulled (kwok runs fake pods): what is proven
here is what the API server decides (admission, RBAC); the operator itself runs out of the cluster with the
chart's ServiceAccount token in test_operator_with_chart_token.py.
"""
from __future__ import annotations

import json
import re
import secrets
import time

import pytest

from chart_tools import CHART, helm

pytestmark = pytest.mark.cluster_logs("kube-apiserver", "kube-controller-manager")

CRD_NAMES = ("moedeployments.serving.moe-operator.io", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
RESTRICTED = ("pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/warn=restricted",
              "pod-security.kubernetes.io/audit=restricted")

#: What the operator may do (docs/install.md "RBAC"): (verb, resource, subresource) in a watched namespace.
ALLOWED_IN_WATCHED = [
    ("get", "moedeployments.serving.moe-operator.io", ""), ("list", "moedeployments.serving.moe-operator.io", ""),
    ("watch", "moedeployments.serving.moe-operator.io", ""), ("patch", "moedeployments.serving.moe-operator.io", ""),
    ("patch", "moedeployments.serving.moe-operator.io", "status"),
    ("get", "rayservices.ray.io", ""), ("list", "rayservices.ray.io", ""), ("watch", "rayservices.ray.io", ""),
    ("create", "rayservices.ray.io", ""), ("update", "rayservices.ray.io", ""), ("patch", "rayservices.ray.io", ""),
    ("get", "rayclusters.ray.io", ""), ("list", "rayclusters.ray.io", ""), ("update", "rayclusters.ray.io", ""),
    ("create", "events", ""), ("get", "secrets", ""), ("create", "secrets", ""), ("list", "pods", ""),
    ("watch", "pods", ""),
    ("get", "networkpolicies.networking.k8s.io", ""), ("create", "networkpolicies.networking.k8s.io", ""),
    ("update", "networkpolicies.networking.k8s.io", ""),
    ("get", "persistentvolumeclaims", ""), ("create", "persistentvolumeclaims", ""),
    ("patch", "persistentvolumeclaims", ""),
    ("list", "kopfpeerings.kopf.dev", ""), ("watch", "kopfpeerings.kopf.dev", ""),
]
#: Secrets are granted by Roles only (issue 14 item 15): never in cluster mode's ClusterRole.
SECRETS = {("get", "secrets", ""), ("create", "secrets", "")}
#: What it must never be able to do, anywhere.
DENIED_EVERYWHERE = [
    ("list", "secrets", ""), ("watch", "secrets", ""), ("update", "secrets", ""), ("delete", "secrets", ""),
    ("create", "pods", ""), ("get", "pods", ""), ("create", "pods", "exec"), ("list", "configmaps", ""),
    ("create", "moedeployments.serving.moe-operator.io", ""), ("update", "moedeployments.serving.moe-operator.io", ""),
    ("delete", "moedeployments.serving.moe-operator.io", ""), ("delete", "rayservices.ray.io", ""),
    ("create", "rayclusters.ray.io", ""), ("delete", "rayclusters.ray.io", ""),
    ("create", "deployments.apps", ""), ("create", "serviceaccounts", "token"), ("impersonate", "serviceaccounts", ""),
    ("create", "rolebindings.rbac.authorization.k8s.io", ""), ("escalate", "roles.rbac.authorization.k8s.io", ""),
    ("list", "nodes", ""), ("delete", "events", ""), ("delete", "persistentvolumeclaims", ""),
    ("list", "persistentvolumeclaims", ""), ("*", "*", ""),
]
#: Rules every authenticated identity has (system:basic-user, system:discovery, system:public-info-viewer).
DEFAULT_RESOURCES = {"selfsubjectaccessreviews.authorization.k8s.io", "selfsubjectrulesreviews.authorization.k8s.io",
                     "selfsubjectreviews.authentication.k8s.io"}


class Release:
    """One helm release of the chart on the test cluster, in its own namespace labelled PSA `restricted`."""

    def __init__(self, cluster, *values: str):
        self.cluster = cluster
        self.suffix = secrets.token_hex(3)
        self.name = f"moe{self.suffix}"
        self.namespace = f"moe-system-{self.suffix}"
        self.values = values
        self.sa = f"{self.name}-moe-operator"
        self.install_stderr = self.install_stdout = ""

    def helm(self, *args: str, check: bool = True):
        return helm(*args, "--kubeconfig", str(self.cluster.kubeconfig), check=check, timeout=180)

    def install(self) -> "Release":
        self.cluster.kubectl("create", "namespace", self.namespace)
        self.cluster.kubectl("label", "namespace", self.namespace, *RESTRICTED)
        sets = []
        for v in self.values:
            sets += ["--set", v]
        proc = self.helm("install", self.name, str(CHART), "--namespace", self.namespace, *sets)
        self.install_stderr, self.install_stdout = proc.stderr, proc.stdout
        return self

    def uninstall(self):
        self.helm("uninstall", self.name, "--namespace", self.namespace, "--wait", check=False)
        self.cluster.kubectl("delete", "namespace", self.namespace, "--wait=false", "--ignore-not-found", check=False)

    def as_sa(self) -> str:
        return f"--as=system:serviceaccount:{self.namespace}:{self.sa}"

    def can(self, verb: str, resource: str, namespace: str | None, subresource: str = "", name: str = "") -> bool:
        target = f"{resource}/{name}" if name else resource
        args = ["auth", "can-i", verb, target, self.as_sa()]
        args += ["-n", namespace] if namespace else ["--all-namespaces"]
        if subresource:
            args += [f"--subresource={subresource}"]
        proc = self.cluster.kubectl(*args, check=False)
        answer = proc.stdout.strip()
        assert answer in {"yes", "no"}, f"kubectl {' '.join(args)}: {proc.stdout}{proc.stderr}"
        return answer == "yes"

    def rules(self, namespace: str) -> dict[tuple[str, str], set[str]]:
        """`kubectl auth can-i --list` for the ServiceAccount: (resource, resourceNames) -> verbs, defaults removed."""
        out = self.cluster.kubectl("auth", "can-i", "--list", self.as_sa(), "-n", namespace).stdout
        table: dict[tuple[str, str], set[str]] = {}
        for line in out.splitlines()[1:]:
            m = re.match(r"^(\S*)\s+\[(.*?)\]\s+\[(.*?)\]\s+\[(.*?)\]\s*$", line)
            assert m, f"unparsed can-i --list line: {line!r}"
            resource, urls, names, verbs = m.groups()
            if not resource or resource in DEFAULT_RESOURCES:
                continue  # non-resource URLs (discovery, version, healthz) and self-reviews: every user has them
            table.setdefault((resource, names), set()).update(verbs.split())
        return table


def wait(what: str, probe, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def get(cluster, *args):
    proc = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


@pytest.fixture
def release(cluster, helm_bin, request):
    made = []

    def make(*values: str) -> Release:
        r = Release(cluster, *values).install()
        made.append(r)
        return r

    yield make
    for r in made:
        r.uninstall()


def established(cluster, crd: str) -> bool:
    obj = get(cluster, "crd", crd)
    return bool(obj) and any(c["type"] == "Established" and c["status"] == "True"
                             for c in obj.get("status", {}).get("conditions", []))


def test_install_creates_crds_sa_rbac_deployment_and_pods_pass_restricted(cluster, release):
    r = release()
    assert "would violate PodSecurity" not in r.install_stderr, r.install_stderr
    # NOTES.txt: where it runs, how to check it, and the next step.
    assert f"rollout status deployment/{r.sa}" in r.install_stdout
    assert "kubectl apply -n <namespace> -f examples/tiny-moe.yaml" in r.install_stdout, r.install_stdout
    for crd in CRD_NAMES:
        wait(f"CRD {crd} Established", lambda crd=crd: established(cluster, crd))
    assert get(cluster, "serviceaccount", r.sa, "-n", r.namespace)
    assert get(cluster, "clusterrole", r.sa) and get(cluster, "clusterrolebinding", r.sa)
    assert get(cluster, "role", f"{r.sa}-catalog", "-n", r.namespace)
    assert get(cluster, "configmap", f"{r.sa}-catalog", "-n", r.namespace)
    assert get(cluster, "clusterkopfpeering.kopf.dev", "moe-operator")
    deploy = get(cluster, "deployment", r.sa, "-n", r.namespace)
    assert deploy["spec"]["replicas"] == 2

    # Admission: the namespace enforces `restricted`, and the ReplicaSet's pods were admitted (kube-controller-
    # manager creates them; a violation would leave a FailedCreate event and no pods).
    pods = wait("2 operator pods admitted", lambda: (p := get(cluster, "pods", "-n", r.namespace, "-l",
                f"app.kubernetes.io/instance={r.name}")) and len(p["items"]) == 2 and p["items"])
    assert all(p["spec"]["securityContext"]["runAsNonRoot"] for p in pods)
    events = get(cluster, "events", "-n", r.namespace)["items"]
    assert not [e for e in events if e["reason"] == "FailedCreate"], [e["message"] for e in events]
    # ... and the namespace really enforces it: a pod that is not `restricted` is rejected.
    bad = cluster.kubectl("run", "privileged", "-n", r.namespace, "--image=busybox", "--restart=Never",
                          "--overrides", json.dumps({"spec": {"containers": [{"name": "privileged", "image": "busybox",
                                                    "securityContext": {"privileged": True}}]}}), check=False)
    assert bad.returncode != 0 and "violates PodSecurity" in bad.stderr, bad.stderr

    # Uninstall removes what the chart installed, except crds/ (Helm never deletes those: docs/install.md).
    r.helm("uninstall", r.name, "--namespace", r.namespace, "--wait")
    for kind, name, ns in [("deployment", r.sa, r.namespace), ("serviceaccount", r.sa, r.namespace),
                           ("clusterrole", r.sa, None), ("clusterrolebinding", r.sa, None),
                           ("role", f"{r.sa}-catalog", r.namespace), ("configmap", f"{r.sa}-catalog", r.namespace),
                           ("clusterkopfpeering.kopf.dev", "moe-operator", None)]:
        args = [kind, name] + (["-n", ns] if ns else [])
        wait(f"{kind} {name} deleted", lambda args=args: get(cluster, *args) is None, timeout=30)
    assert all(established(cluster, crd) for crd in CRD_NAMES)


def test_cluster_mode_rbac_is_exactly_what_the_operator_uses(cluster, release):
    r = release()
    other = f"anywhere-{r.suffix}"
    cluster.kubectl("create", "namespace", other)
    try:
        wait("RBAC to take effect", lambda: r.can("list", "moedeployments.serving.moe-operator.io", other))
        for verb, resource, sub in ALLOWED_IN_WATCHED:
            if resource.startswith("kopfpeerings"):
                continue  # cluster mode peers through ClusterKopfPeering
            if (verb, resource, sub) in SECRETS:   # no rebalance.namespaces: no Secret anywhere
                for ns in (other, r.namespace, None):
                    assert not r.can(verb, resource, ns, sub), f"can {verb} {resource} in {ns or 'all namespaces'}"
                continue
            assert r.can(verb, resource, other, sub), f"cannot {verb} {resource} {sub} in {other}"
        for verb, resource, sub in DENIED_EVERYWHERE:
            for ns in (other, r.namespace, None):
                assert not r.can(verb, resource, ns, sub), f"can {verb} {resource} {sub} in {ns or 'all namespaces'}"
        # Peering: every ClusterKopfPeering may be seen, only ours written.
        assert r.can("patch", "clusterkopfpeerings.kopf.dev", None, name="moe-operator")
        assert not r.can("patch", "clusterkopfpeerings.kopf.dev", None, name="someone-else")
        # The catalog: exactly one ConfigMap, in the release namespace.
        assert r.can("get", "configmaps", r.namespace, name=f"{r.sa}-catalog")
        assert not r.can("get", "configmaps", r.namespace, name="kube-root-ca.crt")
        assert not r.can("get", "configmaps", other, name=f"{r.sa}-catalog")

        # Nothing beyond use: the complete rule list, as the API server computes it.
        expected_any_ns = {
            ("moedeployments.serving.moe-operator.io", ""): {"get", "list", "watch", "patch"},
            ("moedeployments.serving.moe-operator.io/status", ""): {"patch"},
            ("rayservices.ray.io", ""): {"get", "list", "watch", "create", "update", "patch"},
            ("rayclusters.ray.io", ""): {"get", "list", "update"},
            ("events", ""): {"create"},
            ("pods", ""): {"list", "watch"},
            ("networkpolicies.networking.k8s.io", ""): {"get", "create", "update"},
            ("persistentvolumeclaims", ""): {"get", "create", "patch"},
            ("clusterkopfpeerings.kopf.dev", ""): {"list", "watch"},
            ("clusterkopfpeerings.kopf.dev", "moe-operator"): {"get", "patch"},
            ("customresourcedefinitions.apiextensions.k8s.io", ""): {"list", "watch"},
        }
        assert r.rules(other) == expected_any_ns
        assert r.rules(r.namespace) == {**expected_any_ns, ("configmaps", f"{r.sa}-catalog"): {"get"}}
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_namespaced_mode_rbac_stays_in_the_watched_namespaces(cluster, release):
    suffix = secrets.token_hex(3)
    watched, elsewhere = [f"team-a-{suffix}", f"team-b-{suffix}"], f"team-c-{suffix}"
    for ns in [*watched, elsewhere]:
        cluster.kubectl("create", "namespace", ns)
    try:
        r = release(f"watchNamespaces={{{','.join(watched)}}}", "replicaCount=1")
        assert f"kubectl apply -n {watched[0]} -f examples/tiny-moe.yaml" in r.install_stdout, r.install_stdout
        assert not get(cluster, "clusterrole", r.sa) and not get(cluster, "clusterrolebinding", r.sa)
        for ns in watched:
            assert get(cluster, "kopfpeering.kopf.dev", "moe-operator", "-n", ns)
        wait("RBAC to take effect", lambda: r.can("list", "moedeployments.serving.moe-operator.io", watched[0]))
        for ns in watched:
            for verb, resource, sub in ALLOWED_IN_WATCHED:
                assert r.can(verb, resource, ns, sub), f"cannot {verb} {resource} {sub} in {ns}"
            assert r.can("patch", "kopfpeerings.kopf.dev", ns, name="moe-operator")
            assert not r.can("patch", "kopfpeerings.kopf.dev", ns, name="someone-else")
        for verb, resource, sub in ALLOWED_IN_WATCHED:
            assert not r.can(verb, resource, elsewhere, sub), f"can {verb} {resource} {sub} in unwatched {elsewhere}"
            assert not r.can(verb, resource, None, sub), f"can {verb} {resource} {sub} cluster-wide"
        for verb, resource, sub in DENIED_EVERYWHERE:
            for ns in (*watched, elsewhere, r.namespace):
                assert not r.can(verb, resource, ns, sub), f"can {verb} {resource} {sub} in {ns}"
        assert not r.can("list", "customresourcedefinitions.apiextensions.k8s.io", None)
        assert not r.can("list", "clusterkopfpeerings.kopf.dev", None)
        expected = {
            ("moedeployments.serving.moe-operator.io", ""): {"get", "list", "watch", "patch"},
            ("moedeployments.serving.moe-operator.io/status", ""): {"patch"},
            ("rayservices.ray.io", ""): {"get", "list", "watch", "create", "update", "patch"},
            ("rayclusters.ray.io", ""): {"get", "list", "update"},
            ("events", ""): {"create"},
            ("pods", ""): {"list", "watch"},
            ("secrets", ""): {"get", "create"},
            ("networkpolicies.networking.k8s.io", ""): {"get", "create", "update"},
            ("persistentvolumeclaims", ""): {"get", "create", "patch"},
            ("kopfpeerings.kopf.dev", ""): {"list", "watch"},
            ("kopfpeerings.kopf.dev", "moe-operator"): {"get", "patch"},
        }
        assert r.rules(watched[0]) == expected
        assert r.rules(elsewhere) == {}
        assert r.rules(r.namespace) == {("configmaps", f"{r.sa}-catalog"): {"get"}}
    finally:
        for ns in [*watched, elsewhere]:
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
