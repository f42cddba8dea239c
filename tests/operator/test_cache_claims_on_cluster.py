"""The disk tier's claim on a real API server (issue 13: a disk tier that survives pod restarts): made owned by the
MoEDeployment before its RayService, mounted by the pool's pods, grown when the spec asks for more, and a
stranger's claim of the same name never adopted. No provisioner runs here, so claims stay Pending: what a pod
finds in one is tests/runtime_core/test_disk_tier_restart.py's."""
from __future__ import annotations

import copy
import json

import pytest

from bad_specs import GOOD, moed_manifest
from operator_harness import condition, get, wait_for

pytestmark = pytest.mark.cluster_logs("kube-apiserver")


def manifest(name: str, size: str = "1Gi") -> str:
    spec = copy.deepcopy(GOOD)
    spec["cache"] = {"diskTier": {"enabled": True, "size": size, "path": "/var/cache/moe",
                                  "storageClassName": "nfs-rwx"}}
    return moed_manifest(name, spec)


def test_the_claim_is_owned_mounted_and_grown(cluster, namespace, operator):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("dc"))
    claim = wait_for("the pool's claim", lambda: get(cluster, "pvc", "dc-prefix-cache-cpu", "-n", namespace),
                     on_fail=operator.log_tail)
    moed = get(cluster, "moed", "dc", "-n", namespace)
    assert [r["uid"] for r in claim["metadata"]["ownerReferences"]] == [moed["metadata"]["uid"]]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2276Mi"   # 2 writers x 1Gi / 0.9, in MiB
    rs = wait_for("the RayService", lambda: get(cluster, "rayservice", "dc", "-n", namespace),
                  on_fail=operator.log_tail)
    pod = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert {"name": "prefix-cache", "persistentVolumeClaim": {"claimName": "dc-prefix-cache-cpu"}} in pod["volumes"]
    # no provisioner here: the claim stays Pending, and the status says that is what the pods wait for
    ready = wait_for("Ready naming the Pending claim", lambda: (lambda c: c if c and "dc-prefix-cache-cpu not Bound"
                     in c.get("message", "") else None)(condition(get(cluster, "moed", "dc", "-n", namespace),
                                                                  "Ready")), on_fail=operator.log_tail)
    assert ready["status"] == "False" and "ReadWriteMany" in ready["message"], ready
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("dc", size="2Gi"))
    # a Pending claim (no provisioner here) may not be resized: the refusal is logged, the claim and the deployment
    # stay, and the RayService follows the new spec
    wait_for("the grow to 4552Mi attempted and refused", lambda: "dc-prefix-cache-cpu not grown to 4552Mi" in
             operator.log_tail(400), on_fail=operator.log_tail)
    assert get(cluster, "pvc", "dc-prefix-cache-cpu", "-n", namespace)["spec"]["resources"]["requests"][
        "storage"] == "2276Mi"
    assert (condition(get(cluster, "moed", "dc", "-n", namespace), "SpecInvalid") or {}).get("status") != "True"


def test_a_strangers_claim_is_never_mounted_and_no_rayservice_is_made(cluster, namespace, operator):
    stranger = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "taken-prefix-cache-cpu", "namespace": namespace},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(stranger))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("taken"))
    ready = wait_for("Ready=False PrefixCacheClaimNotOwned", lambda: (lambda c: c if c and c.get("reason") ==
                     "PrefixCacheClaimNotOwned" else None)(condition(get(cluster, "moed", "taken", "-n", namespace),
                                                                     "Ready")), on_fail=operator.log_tail)
    assert ready["status"] == "False" and "taken-prefix-cache-cpu" in ready["message"]
    assert get(cluster, "rayservice", "taken", "-n", namespace) is None
    live = get(cluster, "pvc", "taken-prefix-cache-cpu", "-n", namespace)
    assert not live["metadata"].get("ownerReferences")
