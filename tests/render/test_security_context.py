"""Every Ray container the operator renders runs with a restricted securityContext (issue 14 item 16).

All containers: no privilege escalation, every capability dropped, the runtime's default seccomp profile. The torch
engine's images (images/runtime-*.Dockerfile: Ray's images and our CANN image, user ``ray``, uid 1000) also run
as non-root, pinned to uid 1000 so the kubelet can verify it; the vLLM images (``rayproject/ray-llm``, our
vllm-ascend image on quay.io/ascend/vllm-ascend, which runs as root) do not get ``runAsNonRoot``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from moe_operator.api import load_manifest

from render.test_golden import EXAMPLES, render_example  # noqa: E402

RESTRICTED = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
              "seccompProfile": {"type": "RuntimeDefault"}}


def _containers(rayservice: dict) -> list[dict]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    specs = [cluster["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    return [c for spec in specs for c in spec["containers"] + spec.get("initContainers", [])]


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_container_of_every_example_has_a_restricted_security_context(example: Path):
    rs = render_example(example)
    engine = load_manifest(example).spec.engine
    containers = _containers(rs)
    assert len(containers) >= 2  # the head and at least one worker group
    for c in containers:
        sc = c.get("securityContext")
        assert sc is not None, (example.name, c["name"])
        assert {k: sc.get(k) for k in RESTRICTED} == RESTRICTED, (example.name, c["name"], sc)
        assert "privileged" not in sc or sc["privileged"] is False
        if engine == "torch":
            assert sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 1000, (example.name, c["name"], sc)
        else:  # the vLLM images may run as root: runAsNonRoot would stop the pod from starting
            assert "runAsNonRoot" not in sc and "runAsUser" not in sc, (example.name, c["name"], sc)


def test_the_examples_cover_both_engines():
    assert {load_manifest(p).spec.engine for p in EXAMPLES} == {"torch", "vllm"}
