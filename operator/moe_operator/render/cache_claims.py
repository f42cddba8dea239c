"""The PersistentVolumeClaims of the prefix cache's disk tier: one per pool, shared by its replicas. Pure.

An ephemeral volume dies with its pod, and a RayCluster's pod template cannot give each replica its own named claim
(all pods of a worker group share one template). So the disk tier is one ReadWriteMany claim per pool, owned by the
MoEDeployment (garbage-collected with it), mounted on every worker pod of the pool; each replica writes its own
``writer-<k>`` directory under it (moe_runtime/cache/slots.py) within ``cache.diskTier.size``, and a replica that
restarts takes a free slot back with the blocks in it. The claim holds ``maxReplicas`` such budgets plus the
filesystem headroom the runtime never fills (moe_runtime/cache/disk.py HEADROOM_FRACTION). Only the torch engine
has a disk tier; vLLM pods get no cache volume.
"""
from __future__ import annotations

import math
from typing import Any

from .inputs import RenderInput

HEADROOM_FRACTION = 0.1          # moe_runtime.cache.disk.HEADROOM_FRACTION (the runtime leaves it free)
VOLUME_NAME = "prefix-cache"


def claim_name(deployment: str, pool: str) -> str:
    return f"{deployment}-prefix-cache-{pool}"


def has_disk_tier(r: RenderInput) -> bool:
    return r.engine == "torch" and bool(r.cache.get("disk_dir"))


def claim_bytes(per_replica: int, max_replicas: int) -> int:
    """Room for ``max_replicas`` writers of ``per_replica`` bytes, and the headroom, rounded up to a MiB."""
    total = per_replica * max(1, max_replicas) / (1 - HEADROOM_FRACTION)
    return math.ceil(total / 2**20) * 2**20


def render_cache_claims(r: RenderInput, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One claim per pool when the torch engine's disk tier is on (else none); deterministic."""
    if not has_disk_tier(r):
        return []
    out = []
    for p in r.pools:
        mib = claim_bytes(int(r.cache["disk_bytes"]), p.max_replicas) // 2**20
        spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": f"{mib}Mi"}}}
        if r.cache.get("storage_class"):
            spec["storageClassName"] = r.cache["storage_class"]
        out.append({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim_name(r.name, p.name), "namespace": r.namespace,
                         "labels": dict(sorted({**(labels or {}), "serving.moe-operator.io/pool": p.name}.items()))},
            "spec": spec,
        })
    return out
