"""spec + plan + catalog -> RenderInput: the one place that maps API objects onto render values.

Parallel sizes and placement come from the plan (``moe_operator.planning``); device counts, resource names and
node labels from the catalog; images from ``Images``. Nothing here decides *whether* a spec can be served:
planning does that and raises SpecInvalid first.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Mapping

from moe_operator.catalog import Catalog
from moe_operator.errors import SpecInvalid
from moe_operator.planning.parallelism import hosts_per_replica

from .images import Images
from .inputs import PoolRender, RenderInput

if TYPE_CHECKING:   # the types of the seam; planning is imported by the caller, which made the plan
    from moe_operator.api import MoEDeploymentSpec
    from moe_operator.planning.plan import DeploymentPlan, PoolPlan

# Host resources per device, requested by each worker pod (the Ray object store and tokenizers live here).
CPU_PER_DEVICE = {"nvidia": 8, "huawei": 8, "cpu": 8}
MEMORY_GIB_PER_DEVICE = {"nvidia": 64, "huawei": 64, "cpu": 16}
# Catalog key -> Ray Serve LLM accelerator_type, only where Ray detects the name on the node itself
# (ray.util.accelerators); H800 and Ascend are absent there, so those pools are targeted through the
# pool-<name> resource alone.
RAY_ACCELERATOR_TYPE = {
    "nvidia-h100": "H100",
    "nvidia-h200": "H200",
    "nvidia-a100-80gb": "A100",
    "nvidia-l40s": "L40S",
    "nvidia-l4": "L4",
}


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")
_SUFFIX = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}


def quantity_bytes(q: str) -> int:
    """A Kubernetes quantity ("10Gi") in bytes."""
    m = _QUANTITY.match(q.strip())
    if not m:
        raise SpecInvalid(f"{q!r} is not a Kubernetes quantity such as 10Gi", reason="BadQuantity")
    return int(float(m.group(1)) * _SUFFIX[m.group(2)])


def _capacity(pp: PoolPlan) -> dict[str, float]:
    """One replica's planned rates and price, as the ingress's router reads them (RuntimeConfig.routing)."""
    cap = pp.capacity
    return {"prefill_tps": float(cap.prefill_tps), "cached_prefill_tps": float(cap.cached_prefill_tps),
            "decode_tps": float(cap.decode_tps), "price_per_hour": float(cap.price_per_hour)}


def check_disk_tier(spec: MoEDeploymentSpec) -> None:
    """SpecInvalid for a disk tier the cluster cannot give: vLLM has none, and the torch engine's is one claim per
    pool shared by its replicas (render/cache_claims.py), which needs a ReadWriteMany StorageClass named in the spec
    (a cluster's default class is usually ReadWriteOnce: the claim and the pool's pods would stay Pending)."""
    disk = spec.cache.disk_tier
    if not disk.enabled:
        return
    if spec.engine != "torch":
        raise SpecInvalid("cache.diskTier.enabled: the disk tier of the prefix cache is the torch engine's; vLLM keeps "
                          "its prefix cache in accelerator memory (enable_prefix_caching): set diskTier.enabled "
                          "false, or engine torch", reason="DiskTierUnsupported")
    if not disk.storage_class_name:
        raise SpecInvalid("cache.diskTier.storageClassName: name a StorageClass that provides ReadWriteMany volumes "
                          "(NFS, CephFS, Amazon EFS, Filestore, Azure Files): the disk tier is one claim per pool "
                          "shared by its replicas, and a cluster's default class (EBS, PD, Azure Disk) is usually "
                          "ReadWriteOnce, which would leave the claim and the pool's pods Pending",
                          reason="DiskTierNeedsStorageClass")


def build_render_input(
    manifest_name: str,
    namespace: str,
    spec: MoEDeploymentSpec,
    catalog: Catalog,
    plan: DeploymentPlan | None = None,
    images: Images | None = None,
    replicas: Mapping[str, int] | None = None,
) -> RenderInput:
    """The RenderInput of one MoEDeployment.

    ``spec``: a ``MoEDeploymentSpec``. ``plan``: the ``DeploymentPlan`` (parallel sizes, placement) or None
    (then each replica is one tensor-parallel group per host, data-parallel across hosts, expert parallel over
    all its devices). ``replicas``: per-pool replica counts to keep (what the autoscaler set on the live
    RayService), clamped into [minReplicas, maxReplicas]; pools absent there start at their initial replicas.
    """
    images = images or Images.from_env()
    replicas = replicas or {}
    pools = []
    for p in spec.pools:
        acc = catalog.get(p.accelerator)
        per_pod, hosts = hosts_per_replica(acc.vendor, p.devices_per_replica)
        pp = plan.pool(p.name) if plan is not None else None   # a plan without the spec's pool is a bug: KeyError
        if pp is not None:
            par = pp.parallelism
            tp, dp, ep = par.tensor_parallel, par.data_parallel, par.expert_parallel
        else:   # no plan (moectl up where planning cannot size the spec): one TP group per host
            tp = per_pod
            dp, ep = max(1, p.devices_per_replica // tp), p.devices_per_replica
        want = replicas.get(p.name, p.initial_replicas)
        count = acc.vendor if acc.vendor != "cpu" else "cpu"
        pools.append(PoolRender(
            name=p.name,
            accelerator=p.accelerator,
            vendor=acc.vendor,
            resource_name=catalog.resource_name(p.accelerator),
            devices_per_pod=per_pod,
            hosts_per_replica=hosts,
            replicas=min(max(int(want), p.min_replicas), p.max_replicas),
            initial_replicas=min(max(int(p.initial_replicas), p.min_replicas), p.max_replicas),
            min_replicas=p.min_replicas,
            max_replicas=p.max_replicas,
            tp=tp,
            dp=dp,
            ep=ep,
            image=p.image or images.worker(spec.engine, acc.vendor),
            cpu=str(CPU_PER_DEVICE[count] * per_pod),
            memory=f"{MEMORY_GIB_PER_DEVICE[count] * per_pod}Gi",
            node_selector=dict(sorted({**acc.node_selector, **p.node_selector}.items())),
            tolerations=[t.model_dump(by_alias=True, exclude_none=True) for t in p.tolerations],
            ray_accelerator_type=RAY_ACCELERATOR_TYPE.get(p.accelerator),
            placement=dict(pp.placement) if pp is not None else None,
            capacity=_capacity(pp) if pp is not None else None,
        ))
    disk = spec.cache.disk_tier
    check_disk_tier(spec)
    return RenderInput(
        name=manifest_name,
        namespace=namespace,
        engine=spec.engine,
        model_source=spec.model.source,
        served_model_name=spec.model.served_model_name or manifest_name,
        architecture=spec.model.architecture,
        quantization=spec.quantization,
        max_context_tokens=spec.model.max_context_tokens,
        max_batch_size=spec.serving.max_batch_size,
        max_queue=spec.serving.max_queue,
        cache={
            "prefix": spec.cache.prefix,
            "block_tokens": spec.cache.block_tokens,
            "memory_bytes": spec.cache.memory_bytes,
            "disk_dir": disk.path if disk.enabled else None,
            "disk_bytes": quantity_bytes(disk.size) if disk.enabled else 0,
            "disk_size": disk.size,
            "storage_class": disk.storage_class_name or "",
        },
        pools=tuple(pools),
        head_image=images.head(spec.engine, len(spec.pools)),
        ray_version=images.ray_version_for(spec.engine),
        admin_token_secret=admin_secret_name(manifest_name) if spec.rebalance.enabled else None,
        # the TPOT target sizes the scale-down drain only while the autoscaler holds TPOT near it (render/drain.py)
        seconds_per_token=spec.autoscaling.slo.tpot_p95_seconds if spec.autoscaling.enabled else None,
        ttft_target_s=spec.autoscaling.slo.ttft_p95_seconds,
        tpot_target_s=spec.autoscaling.slo.tpot_p95_seconds,
    )


ADMIN_TOKEN_KEY = "token"   # the key of the admin Secret holding the token (docs/contracts.md section 7)


def admin_secret_name(name: str) -> str:
    """The Secret holding the runtime admin token of MoEDeployment ``name`` (docs/contracts.md section 7)."""
    return f"{name}-runtime-admin"

