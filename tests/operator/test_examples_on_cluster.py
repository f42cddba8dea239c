"""kubectl apply of every example -> an owned RayService equal to its golden, a RayCluster, pods on the right nodes."""
from __future__ import annotations


import pytest
import yaml

from moe_operator.handlers.drift import contains
from operator_harness import ROOT, condition, get, wait_for

pytestmark = pytest.mark.cluster_logs("ray-operator", "kube-scheduler", "kube-apiserver")

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
GOLDEN = ROOT / "tests" / "render" / "golden"
# Pools whose accelerator the test cluster has no nodes for (it has H800, A100 and Ascend 910B groups).
NO_NODES = {("qwen3-moe", "h100")}


def _owner_ok(obj, moed) -> bool:
    return any(r.get("kind") == "MoEDeployment" and r.get("uid") == moed["metadata"]["uid"] and r.get("controller")
               for r in obj["metadata"].get("ownerReferences", []))


def test_examples_converge_to_golden_rayservices_on_the_right_nodes(cluster, namespace, operator):
    for ex in EXAMPLES:
        cluster.kubectl("apply", "-n", namespace, "-f", str(ex))
    names = {yaml.safe_load(ex.read_text())["metadata"]["name"]: ex for ex in EXAMPLES}
    nodes = {n["metadata"]["name"]: n["metadata"]["labels"] for n in get(cluster, "nodes")["items"]}

    for name, ex in names.items():
        rs = wait_for(f"RayService {name}", lambda: get(cluster, "rayservice", name, "-n", namespace),
                      on_fail=operator.log_tail)
        moed = get(cluster, "moed", name, "-n", namespace)
        assert _owner_ok(rs, moed), rs["metadata"].get("ownerReferences")
        golden = yaml.safe_load((GOLDEN / f"{ex.stem}.yaml").read_text())
        assert rs["spec"]["serveConfigV2"] == golden["spec"]["serveConfigV2"]
        assert contains(rs["spec"], golden["spec"]), f"{name}: live RayService differs from its golden"
        assert contains(rs["metadata"]["labels"], golden["metadata"]["labels"])

        rc = wait_for(
            f"RayCluster of {name}",
            lambda: [
                c
                for c in get(cluster, "rayclusters.ray.io", "-n", namespace)["items"]
                if any(
                    o.get("kind") == "RayService" and o.get("name") == name
                    for o in c["metadata"].get("ownerReferences", [])
                )
            ],
        )
        cluster_name = rc[0]["metadata"]["name"]

        for group in golden["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
            pool = group["groupName"]
            want = group["replicas"] * group.get("numOfHosts", 1)
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            selector = group["template"]["spec"]["nodeSelector"]

            def pods(pool=pool):
                return get(cluster, "pods", "-n", namespace, "-l",
                           f"ray.io/cluster={cluster_name},ray.io/group={pool}")["items"]

            if (name, pool) in NO_NODES:
                ps = wait_for(f"{name}/{pool} pods created", lambda: len(pods()) == want and pods())
                assert all(not p["spec"].get("nodeName") for p in ps), "no node has this accelerator: must stay Pending"
                continue
            ps = wait_for(f"{want} Running pods of {name}/{pool}",
                          lambda: (lambda xs: xs if len(xs) == want and all(
                              p["status"].get("phase") == "Running" for p in xs) else None)(pods()), timeout=90)
            for p in ps:
                labels = nodes[p["spec"]["nodeName"]]
                assert all(labels.get(k) == v for k, v in selector.items()), (p["metadata"]["name"], labels)
                got = p["spec"]["containers"][0]["resources"]["limits"]
                for res in ("nvidia.com/gpu", "huawei.com/Ascend910"):
                    assert got.get(res) == limits.get(res)
                if "huawei.com/Ascend910" in limits:
                    assert labels["accelerator"] == "huawei-Ascend910"
                    assert '\\"NPU\\": ' in group["rayStartParams"]["resources"]
                if "nvidia.com/gpu" in limits:
                    assert labels["nvidia.com/gpu.present"] == "true"

    for name in names:
        moed = wait_for(f"status of {name}", lambda: (lambda m: m if (m.get("status") or {}).get("replicas") else None)(
            get(cluster, "moed", name, "-n", namespace)))
        assert condition(moed, "SpecInvalid")["status"] == "False"
        assert moed["status"]["observedGeneration"] == moed["metadata"]["generation"]
        assert moed["status"]["placement"]["shards"] >= 1
    table = cluster.kubectl("get", "moed", "-n", namespace, "-o", "wide").stdout.splitlines()
    header = table[0].split()
    assert header[:4] == ["NAME", "READY", "REPLICAS", "TOKENS/S"], table[0]
    for row in table[1:]:
        cols = row.split()
        assert cols[1] in ("True", "False") and "=" in cols[2], row      # Ready and per-pool replicas filled
        assert any(c.replace(".", "").isdigit() for c in cols[3:]), row   # $/h (wide) filled
