"""Which fields of the RayService we own, and whether the live object has drifted from them.

We own ``spec`` (as rendered), our labels and our ownerReference. Fields the API server or KubeRay add
(defaults, status, annotations) are not ours: comparison is "every rendered value is present and equal",
so defaulting never looks like drift and never causes a write.
"""
from __future__ import annotations

from typing import Any


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


def drifted(live: dict[str, Any], desired: dict[str, Any]) -> bool:
    want = owned_view(desired)
    have = live.get("metadata", {})
    if not contains(have.get("labels", {}), want["metadata"]["labels"]):
        return True
    uids = {r.get("uid") for r in have.get("ownerReferences", [])}
    if any(r.get("uid") not in uids for r in want["metadata"]["ownerReferences"]):
        return True
    return not contains(live.get("spec", {}), want["spec"])


def repair(live: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Put our owned fields into ``live`` (in place); False when nothing needed changing."""
    if not drifted(live, desired):
        return False
    meta = live.setdefault("metadata", {})
    meta["labels"] = {**meta.get("labels", {}), **desired["metadata"].get("labels", {})}
    refs = [r for r in meta.get("ownerReferences", []) if r.get("uid") not in
            {d.get("uid") for d in desired["metadata"].get("ownerReferences", [])}]
    meta["ownerReferences"] = refs + list(desired["metadata"].get("ownerReferences", []))
    live["spec"] = desired["spec"]
    return True


def live_replicas(live: dict[str, Any] | None) -> dict[str, int]:
    """Worker-group replicas on the live RayService (what the autoscaler last set), by pool name."""
    if not live:
        return {}
    groups = live.get("spec", {}).get("rayClusterConfig", {}).get("workerGroupSpecs", []) or []
    return {g["groupName"]: int(g["replicas"]) for g in groups if "groupName" in g and g.get("replicas") is not None}
