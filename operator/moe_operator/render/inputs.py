"""What a render needs, as plain frozen data: one ``RenderInput`` with one ``PoolRender`` per pool.

Render takes these instead of the API/plan objects so that templates see only finished values (no
arithmetic in templates) and so that ``context.py`` is the one place that maps spec + plan + catalog onto them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Vendor = Literal["nvidia", "huawei", "cpu"]


POOL_RESOURCE_PREFIX = "pool-"


def pool_resource(pool: str) -> str:
    """The custom Ray resource a pool's workers advertise and its replicas request (contracts section 3).

    The one definition in the operator; moe_runtime.local_serve keeps its own copy (the runtime never imports the
    operator).
    """
    return POOL_RESOURCE_PREFIX + pool


def resource_pool(key: Any) -> str | None:
    """The pool a Ray resource key names (``pool-<pool>``), or None for any other key."""
    if isinstance(key, str) and key.startswith(POOL_RESOURCE_PREFIX):
        return key[len(POOL_RESOURCE_PREFIX):]
    return None


@dataclass(frozen=True)
class PoolRender:
    """One worker group and the Serve deployment that runs on it.

    ``devices_per_pod``: accelerators each worker pod requests (a replica spans ``hosts_per_replica`` pods).
    ``tp``/``dp``/``ep``: tensor / data / expert parallel sizes of one replica (tp * dp = devices per replica).
    ``cpu``/``memory``: per-pod requests (Kubernetes quantities).
    """

    name: str
    accelerator: str                  # catalog key, e.g. nvidia-h800
    vendor: Vendor
    resource_name: str | None         # nvidia.com/gpu, huawei.com/Ascend910, ...; None for cpu
    devices_per_pod: int
    hosts_per_replica: int
    replicas: int
    min_replicas: int
    max_replicas: int
    tp: int
    dp: int
    ep: int
    image: str
    cpu: str
    memory: str
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    ray_accelerator_type: str | None = None   # Ray Serve LLM accelerator_type (only names Ray knows)
    placement: dict[str, Any] | None = None   # contracts section 2 JSON (torch engine)
    initial_replicas: int | None = None       # the spec's start count: the torch app's args (None: ``replicas``)
    # one replica's planned rates and price {prefill_tps, cached_prefill_tps, decode_tps, price_per_hour}: the
    # router prices pools with it (None: no plan)
    capacity: dict[str, float] | None = None

    @property
    def ray_resource(self) -> str:
        """The Ray resource key a device is advertised as: GPU (NVIDIA), NPU (Ascend), CPU."""
        return {"nvidia": "GPU", "huawei": "NPU", "cpu": "CPU"}[self.vendor]

    @property
    def pool_resource(self) -> str:
        """Custom Ray resource every worker of this pool advertises; Serve deployments target it."""
        return pool_resource(self.name)

    @property
    def devices_per_replica(self) -> int:
        return self.devices_per_pod * self.hosts_per_replica


@dataclass(frozen=True)
class RenderInput:
    """Everything about one MoEDeployment that the RayService depends on."""

    name: str
    namespace: str
    engine: Literal["torch", "vllm"]
    model_source: str
    served_model_name: str
    architecture: str | None
    quantization: str
    max_context_tokens: int
    max_batch_size: int
    max_queue: int
    cache: dict[str, Any]              # {prefix, block_tokens, memory_bytes, disk_dir, disk_bytes}
    pools: tuple[PoolRender, ...]
    head_image: str
    ray_version: str                   # rayVersion: the Ray of this engine's images (Images.ray_version_for)
    labels: dict[str, str] = field(default_factory=dict)
    admin_token_secret: str | None = None   # Secret whose key `token` becomes env MOE_ADMIN_TOKEN (spec.rebalance)
    seconds_per_token: float | None = None  # the TPOT target sizing the scale-down drain (drain.py); None: default
    ttft_target_s: float | None = None  # the SLO: the router's headroom ends where it would be missed
    tpot_target_s: float | None = None
