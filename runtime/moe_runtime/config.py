"""RuntimeConfig: the one object that builds the torch engine's Ray Serve app (docs/contracts.md section 3).

The operator renders it (snake_case) into serveConfigV2 ``args``; ``moectl up`` builds the same object locally.
Unknown keys are rejected so that a typo in a rendered config fails at deploy time instead of being ignored.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from moe_runtime.experts.placement import missing_experts


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ShardSpec(_Strict):
    """One expert-shard actor: where it runs (``device``) and the Ray resources it asks for."""

    name: str
    device: str = "cpu"
    ray_resources: dict[str, float] = Field(default_factory=dict, alias="rayResources")


class Placement(_Strict):
    """Experts -> shards (contracts section 2, camelCase JSON through aliases).

    ``layers[l][s]`` lists the expert ids shard ``s`` holds in MoE layer ``l``; a single entry applies to
    every layer. An expert on two shards is a redundant copy.
    """

    num_layers: int = Field(alias="numLayers", ge=1)
    num_experts: int = Field(alias="numExperts", ge=1)
    shards: list[ShardSpec] = Field(min_length=1)
    layers: list[list[list[int]]] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> "Placement":
        if len(self.layers) not in (1, self.num_layers):
            raise ValueError(
                f"placement.layers has {len(self.layers)} entries; expected 1 or numLayers={self.num_layers}"
            )
        for li, layer in enumerate(self.layers):
            if len(layer) != len(self.shards):
                raise ValueError(f"placement.layers[{li}] has {len(layer)} shards; expected {len(self.shards)}")
            seen: set[int] = set()
            for experts in layer:
                for e in experts:
                    if not 0 <= e < self.num_experts:
                        raise ValueError(f"placement.layers[{li}] names expert {e}; numExperts={self.num_experts}")
                    seen.add(e)
            missing = missing_experts(seen, self.num_experts)  # never set(range(numExperts)): 1e9 is gigabytes
            if missing:
                raise ValueError(f"placement.layers[{li}] places no copy of experts {missing}")
        return self

    def experts_of(self, layer: int, shard: int) -> list[int]:
        """Expert ids that shard index ``shard`` holds in MoE layer ``layer``."""
        return list(self.layers[0 if len(self.layers) == 1 else layer][shard])

    def to_json(self) -> dict[str, Any]:
        """The camelCase JSON form of contracts section 2."""
        return self.model_dump(by_alias=True)


Device = Literal["auto", "cpu", "cuda", "npu"]
DType = Literal["float32", "bfloat16", "float16"]


class PoolConfig(_Strict):
    """One pool's Serve deployment ``engine-<name>``; ``ray_actor_options`` go to Ray unchanged. ``device``,
    ``dtype`` and ``placement`` (None: the app's) are the pool's own: pools of one app may be different vendors."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    num_replicas: int = Field(default=1, ge=0)
    ray_actor_options: dict[str, Any] = Field(default_factory=dict)
    device: Device | None = None
    dtype: DType | None = None
    placement: Placement | None = None

    @model_serializer(mode="wrap")
    def _own_only(self, handler):
        """Unset own values are left out, so a pool that runs as its app does dumps as before."""
        out = handler(self)
        for k in ("device", "dtype", "placement"):
            if out.get(k) is None:
                out.pop(k, None)
        return out


class CacheConfig(_Strict):
    """Prefix (context) cache: fixed-size token blocks, a memory tier (bytes) and an optional disk tier."""

    prefix: bool = True
    block_tokens: int = Field(default=64, ge=1)
    memory_bytes: int = Field(default=256 * 2**20, ge=0)
    disk_dir: str | None = None  # None = no disk tier
    disk_bytes: int = Field(default=0, ge=0)


class RoutingConfig(_Strict):
    """What the router prices pools with (moe_runtime.routing): work units per prompt and cached prompt token
    (a generated token is 1) and each pool's $ per work unit at full use. Rendered for apps of two or more
    pools only; without it every pool costs the same and the router balances load and prefix affinity alone."""

    prompt_weight: float = Field(default=0.2, ge=0)
    cached_prompt_weight: float = Field(default=0.01, ge=0)
    dollars_per_work: dict[str, float] = Field(default_factory=dict)  # pool -> $ per work unit
    prefill_tps: dict[str, float] = Field(default_factory=dict)  # pool -> one replica's prompt tokens/s
    decode_tps: dict[str, float] = Field(default_factory=dict)  # pool -> one replica's tokens/s at a full batch
    ttft_target_s: float | None = Field(default=None, gt=0)  # the SLO: headroom ends where it would be missed
    tpot_target_s: float | None = Field(default=None, gt=0)
    prefill_chunk_tokens: int = Field(default=0, ge=0)  # prompt tokens per step beside decode; 0: whole prompts
    # cost-prefix: moe_runtime.routing.rank; least-loaded: fewest in flight per slot (prices and prefixes ignored),
    # the baseline benchmarks print beside it
    policy: Literal["cost-prefix", "least-loaded"] = "cost-prefix"

    @model_validator(mode="after")
    def _finite(self) -> "RoutingConfig":
        """Prices and rates rank replicas: a negative or NaN one would invert or break the order."""
        import math

        for name in ("dollars_per_work", "prefill_tps", "decode_tps"):
            bad = {p: v for p, v in getattr(self, name).items() if not (math.isfinite(v) and v >= 0)}
            if bad:
                raise ValueError(f"routing.{name} must be finite and >= 0, got {bad}")
        return self


class RuntimeConfig(_Strict):
    """Everything one replica of the torch engine needs, plus the pools the app deploys."""

    model_name: str = Field(min_length=1)  # the model id in the OpenAI API
    model_source: str = Field(min_length=1)  # builtin://tiny-moe | /local/path | pvc://... (resolved in the pod)
    device: Device = "auto"
    dtype: DType = "float32"
    quantization: Literal["none", "int8", "int4"] = "none"
    placement: Placement | None = None  # None = all experts in the engine process
    pools: list[PoolConfig] = Field(default_factory=lambda: [PoolConfig(name="cpu")], min_length=1)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    max_batch_size: int = Field(default=16, ge=1)  # sequences decoded together
    max_queue: int = Field(default=64, ge=0)  # waiting requests before QueueFull (HTTP 429)
    max_context_tokens: int = Field(default=4096, ge=8)  # prompt + generated tokens per sequence
    metrics_labels: dict[str, str] = Field(default_factory=dict)  # extra constant labels, e.g. {"pool": "cpu"}
    routing: RoutingConfig | None = None  # the router's pool prices (None: all pools cost the same)
    wake_deadline_s: float = Field(default=300.0, gt=0, le=3600)  # how long a request waits for a replica at zero

    @model_serializer(mode="wrap")
    def _set_only(self, handler):
        """Defaults added after a release are left out, so the args of an app that does not use them stay the
        same bytes (a change of ``args`` makes Serve replace every replica)."""
        out = handler(self)
        if out.get("routing") is None:
            out.pop("routing", None)
        if out.get("wake_deadline_s") == 300.0:
            out.pop("wake_deadline_s", None)
        return out

    @model_validator(mode="after")
    def _unique_pools(self) -> "RuntimeConfig":
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique, got {names}")
        return self

    def for_pool(self, pool: str) -> "RuntimeConfig":
        """What each ``engine-<pool>`` replica runs with: the pool's own device, dtype and placement where it has
        them, and metrics that carry ``pool=<pool>``."""
        update: dict[str, Any] = {"metrics_labels": {**self.metrics_labels, "pool": pool}}
        own = next((p for p in self.pools if p.name == pool), None)
        if own is not None:
            update.update({k: getattr(own, k) for k in ("device", "dtype", "placement") if getattr(own, k) is not None})
        return self.model_copy(update=update)
