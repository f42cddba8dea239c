"""The bad-input corpus against the real API server and operator, while a good MoEDeployment keeps reconciling."""
from __future__ import annotations

import json

import pytest

from bad_specs import CORPUS, GOOD, bad_spec
from operator_harness import condition, get, wait_for

pytestmark = pytest.mark.cluster_logs("kube-apiserver")


def manifest(name: str, spec: dict) -> str:
    return json.dumps({"apiVersion": "serving.moe-operator.io/v1alpha1", "kind": "MoEDeployment",
                       "metadata": {"name": name}, "spec": spec})


def test_bad_specs_are_rejected_or_spec_invalid_and_the_operator_keeps_working(cluster, namespace, operator):
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("good", GOOD))
    wait_for("the good RayService", lambda: get(cluster, "rayservice", "good", "-n", namespace),
             on_fail=operator.log_tail)

    operator_side = []
    for id_, mutate, where, says in CORPUS:
        proc = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(f"bad-{id_}", bad_spec(mutate)),
                               check=False)
        if where == "api":
            assert proc.returncode != 0, f"{id_}: the API server accepted it"
            assert says in proc.stderr, f"{id_}: unhelpful rejection: {proc.stderr.strip()}"
        else:
            assert proc.returncode == 0, f"{id_}: schema-valid spec rejected: {proc.stderr.strip()}"
            operator_side.append((id_, where, says))

    for id_, reason, says in operator_side:
        name = f"bad-{id_}"
        moed = wait_for(f"SpecInvalid on {name}", lambda: (lambda m: m if (condition(m, "SpecInvalid") or {}).get(
            "status") == "True" else None)(get(cluster, "moed", name, "-n", namespace)), on_fail=operator.log_tail)
        c = condition(moed, "SpecInvalid")
        assert c["reason"] == reason and says in c["message"], c
        assert condition(moed, "Ready")["status"] == "False"
        assert get(cluster, "rayservice", name, "-n", namespace) is None, f"{name}: created something"
        events = get(cluster, "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")["items"]
        assert any(e["reason"] == reason and e["type"] == "Warning" for e in events), [e["reason"] for e in events]

    assert operator.alive(), "the operator died on bad input"
    # the good resource still reconciles: a spec change reaches its RayService
    cluster.kubectl("patch", "moed", "good", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"pools": [{**GOOD["pools"][0], "maxReplicas": 5}]}}))
    wait_for(
        "the good RayService to follow the new maxReplicas",
        lambda: (
            (get(cluster, "rayservice", "good", "-n", namespace) or {})
            .get("spec", {})
            .get("rayClusterConfig", {})
            .get("workerGroupSpecs", [{}])[0]
            .get("maxReplicas")
            == 5
        ),
        on_fail=operator.log_tail,
    )
    # and a fixed bad resource recovers
    fixed = bad_spec(lambda s: None)
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("bad-vllm-on-cpu", fixed))
    wait_for("the fixed resource to get its RayService",
             lambda: get(cluster, "rayservice", "bad-vllm-on-cpu", "-n", namespace), on_fail=operator.log_tail)
    moed = wait_for("SpecInvalid False after the fix", lambda: (lambda m: m if (condition(m, "SpecInvalid") or {}).get(
        "status") == "False" else None)(get(cluster, "moed", "bad-vllm-on-cpu", "-n", namespace)))
    assert moed["status"]["observedGeneration"] == moed["metadata"]["generation"]
