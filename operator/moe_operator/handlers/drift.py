"""Which fields of the RayService we own, and whether the live object has drifted from them.

We own ``spec`` (as rendered), our labels and our ownerReference. Fields the API server or KubeRay add
(defaults, status, annotations) are not ours: comparison is "every rendered value is present and equal",
so defaulting never looks like drift and never causes a write. ``serveConfigV2`` is compared as YAML data,
not text, so the autoscaler's re-serialisation is not drift.

Sizes are shared with the autoscaler: worker-group ``replicas``/``minReplicas``/``maxReplicas`` are what its
actuator patches. A drift check (timer, RayService watch) ignores them; a spec change (``strict``) applies
them from the spec, keeping the live replica count inside the new bounds.
"""
from __future__ import annotations

import copy
from typing import Any

import yaml

from moe_operator.render.fastyaml import load

SIZE_FIELDS = ("replicas", "minReplicas", "maxReplicas")
# Container fields a newer operator renders that would change every pod template: with KubeRay's NewCluster upgrade
# a whole second cluster per deployment, all at once on the first sweep after an upgrade. The sweep (non-strict)
# neither compares nor writes them; the next spec change (strict) applies them.
SPEC_CHANGE_ONLY = ("securityContext",)
# Pod-spec fields of the same kind: terminationGracePeriodSeconds (issue 13: no pod is killed while a Serve replica on
# it may still drain, render/drain.py).
POD_SPEC_CHANGE_ONLY = ("terminationGracePeriodSeconds",)


def _pod_specs(spec: dict[str, Any]) -> dict[tuple, dict[str, Any]]:
    """Each group's pod spec by group: ("head",) and ("worker", groupName)."""
    cfg = spec.get("rayClusterConfig") or {}
    groups = [(("head",), cfg.get("headGroupSpec") or {})]
    groups += [(("worker", g.get("groupName")), g) for g in cfg.get("workerGroupSpecs") or [] if isinstance(g, dict)]
    out = {}
    for key, g in groups:
        pod = (g.get("template") or {}).get("spec") if isinstance(g.get("template"), dict) else None
        if isinstance(pod, dict):
            out[key] = pod
    return out


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for pod in _pod_specs(spec).values() for c in pod.get("containers") or [] if isinstance(c, dict)]


def _normalise(spec: dict[str, Any], strict: bool) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    raw = out.get("serveConfigV2")
    if isinstance(raw, str):
        try:
            out["serveConfigV2"] = load(raw)
        except yaml.YAMLError:
            pass   # unparseable: compared as text, so it counts as drift
    if not strict:
        for g in (out.get("rayClusterConfig") or {}).get("workerGroupSpecs") or []:
            for k in SIZE_FIELDS:
                g.pop(k, None)
        for c in _containers(out):
            for k in SPEC_CHANGE_ONLY:
                c.pop(k, None)
        for pod in _pod_specs(out).values():
            for k in POD_SPEC_CHANGE_ONLY:
                pod.pop(k, None)
    return out


def contains(live: Any, want: Any) -> bool:
    """True when ``want`` is a sub-structure of ``live`` (dicts by key, lists element-wise, same length)."""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(k in live and contains(live[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(live, list) and len(live) == len(want) and all(contains(a, b) for a, b in zip(live, want))
    if isinstance(want, (int, float)) and not isinstance(want, bool) and isinstance(live, (int, float)):
        return live == want
    return live == want


def owned_view(obj: dict[str, Any]) -> dict[str, Any]:
    """The parts of a RayService we own."""
    meta = obj.get("metadata", {})
    return {
        "metadata": {"labels": meta.get("labels", {}), "ownerReferences": meta.get("ownerReferences", [])},
        "spec": obj.get("spec", {}),
    }


def drifted(live: dict[str, Any], desired: dict[str, Any], strict: bool = True) -> bool:
    """True when an owned field differs; ``strict=False`` leaves the autoscaler's sizes out."""
    want = owned_view(desired)
    have = live.get("metadata", {})
    if not contains(have.get("labels", {}), want["metadata"]["labels"]):
        return True
    uids = {r.get("uid") for r in have.get("ownerReferences", [])}
    if any(r.get("uid") not in uids for r in want["metadata"]["ownerReferences"]):
        return True
    return not contains(_normalise(live.get("spec", {}), strict), _normalise(want["spec"], strict))


def repair(live: dict[str, Any], desired: dict[str, Any], strict: bool = True) -> bool:
    """Put our owned fields into ``live`` (in place); False when nothing needed changing.

    Non-strict repair keeps the live sizes of worker groups (the autoscaler's), the containers' SPEC_CHANGE_ONLY
    and the pod specs' POD_SPEC_CHANGE_ONLY fields, and writes the rest.
    """
    if not drifted(live, desired, strict):
        return False
    desired = copy.deepcopy(desired)
    if not strict:
        live_groups = {g.get("groupName"): g for g in
                       (live.get("spec", {}).get("rayClusterConfig") or {}).get("workerGroupSpecs") or []}
        for g in desired["spec"].get("rayClusterConfig", {}).get("workerGroupSpecs") or []:
            old = live_groups.get(g.get("groupName"))
            if old:
                for k in SIZE_FIELDS:
                    if k in old:
                        g[k] = old[k]
        live_containers = {(i, c.get("name")): c for i, c in enumerate(_containers(live.get("spec", {})))}
        for i, c in enumerate(_containers(desired["spec"])):
            old_c = live_containers.get((i, c.get("name")), {})
            for k in SPEC_CHANGE_ONLY:
                if k in old_c:
                    c[k] = copy.deepcopy(old_c[k])
                else:
                    c.pop(k, None)
        live_pods = _pod_specs(live.get("spec", {}))
        for key, pod in _pod_specs(desired["spec"]).items():
            old_pod = live_pods.get(key, {})
            for k in POD_SPEC_CHANGE_ONLY:
                if k in old_pod:
                    pod[k] = copy.deepcopy(old_pod[k])
                else:
                    pod.pop(k, None)
    meta = live.setdefault("metadata", {})
    meta["labels"] = {**meta.get("labels", {}), **desired["metadata"].get("labels", {})}
    refs = [r for r in meta.get("ownerReferences", []) if r.get("uid") not in
            {d.get("uid") for d in desired["metadata"].get("ownerReferences", [])}]
    meta["ownerReferences"] = refs + list(desired["metadata"].get("ownerReferences", []))
    live["spec"] = desired["spec"]
    return True


def live_replicas(live: dict[str, Any] | None) -> dict[str, int]:
    """Replicas per pool on the live RayService (what the autoscaler last set): Serve's count where serveConfigV2
    holds one, else the worker group's. They differ while a scale-down drains: the group (and its record here) keeps
    its pods until they hold no replica (handlers/autoscale.py ``remove_drained``), so the group is not the count."""
    if not live:
        return {}
    from moe_operator.autoscaling.actuator import serve_replicas

    groups = live.get("spec", {}).get("rayClusterConfig", {}).get("workerGroupSpecs", []) or []
    out = {g["groupName"]: int(g["replicas"]) for g in groups if "groupName" in g and g.get("replicas") is not None}
    try:
        out.update(serve_replicas(live))
    except Exception:  # noqa: BLE001 - a hand-edited serveConfigV2: the groups' counts, as before
        pass
    return out
