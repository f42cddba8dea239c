"""The plan of a MoEDeployment: per pool, fit, parallelism, placement, capacity and cost, or SpecInvalid.

``plan_deployment`` is what the operator, ``moectl plan`` and ``moectl render`` call; ``DeploymentPlan`` dumps to the
stable JSON of ``moectl plan --json`` (``model_dump(mode="json")``; documented in docs/capacity-model.md).
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

from moe_operator.catalog import Catalog
from moe_operator.errors import SpecInvalid
from moe_operator.planning.capacity import PoolCapacity, replica_capacity, replica_throughput
from moe_operator.planning.cost import CostSummary, cost_summary
from moe_operator.planning.fit import MemoryFit, dense_bytes, memory_fit, not_fit_message
from moe_operator.planning.initial_placement import initial_placement
from moe_operator.planning.model import ModelFacts, model_facts
from moe_operator.planning.parallelism import Parallelism, choose_parallelism, valid_device_counts

PLAN_VERSION = 1  # bumped when a field of the JSON changes meaning or disappears


class ModelSummary(BaseModel):
    """The model facts `moectl plan` shows. Parameters are counts; KV bytes are per token at bf16."""

    model_config = ConfigDict(frozen=True)

    architecture: str
    total_params: int
    active_params: int
    layers: int
    moe_layers: int
    experts: int
    experts_per_token: int
    shared_experts: int
    attention: str
    attention_heads: int
    kv_heads: int
    kv_bytes_per_token: float

    @classmethod
    def of(cls, f: ModelFacts) -> "ModelSummary":
        return cls(
            architecture=f.architecture, total_params=f.total_params, active_params=f.active_params,
            layers=f.num_layers, moe_layers=f.num_moe_layers, experts=f.num_experts,
            experts_per_token=f.experts_per_token, shared_experts=f.num_shared_experts, attention=f.attention,
            attention_heads=f.num_attention_heads, kv_heads=f.num_kv_heads, kv_bytes_per_token=f.kv_bytes_per_token(),
        )


class Roofline(BaseModel):
    """What bounds each phase of one replica (compute | memory), the decode step time and the matmul dtype."""

    model_config = ConfigDict(frozen=True)

    prefill_bound: str
    decode_bound: str
    decode_step_seconds: float
    compute_dtype: str


class PlacementSummary(BaseModel):
    """Shape of the initial placement: shards per replica, experts per shard, redundant copies."""

    model_config = ConfigDict(frozen=True)

    shards: int
    experts_per_shard: str
    redundant_slots: int


class PoolPlan(BaseModel):
    """Everything planned for one pool (capacity and cost per replica)."""

    model_config = ConfigDict(frozen=True)

    name: str
    accelerator: str
    vendor: str
    devices_per_replica: int
    min_replicas: int
    max_replicas: int
    initial_replicas: int
    fit: MemoryFit
    parallelism: Parallelism
    placement: dict[str, Any]
    placement_summary: PlacementSummary
    capacity: PoolCapacity
    roofline: Roofline
    cost: CostSummary


class DeploymentPlan(BaseModel):
    """The plan of one MoEDeployment; ``model_dump(mode="json")`` is `moectl plan --json`."""

    model_config = ConfigDict(frozen=True)

    version: int = PLAN_VERSION
    name: str
    engine: str
    quantization: str
    max_context_tokens: int
    max_batch_size: int
    model: ModelSummary
    pools: list[PoolPlan]

    def pool(self, name: str) -> PoolPlan:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)


def facts_for(spec: Any, catalog: Catalog | None = None) -> ModelFacts:
    """Model facts of a spec: the one place ``spec.model`` is resolved to a config (docs/catalog.md "Model catalog").

    In order: ``spec.model.config`` if given; else the catalog entry named by ``catalogName``; else the entry whose
    Hugging Face ids hold an ``hf://`` source (SpecInvalid(UnknownModel) naming the nearest entries when none does);
    else the tiny model for builtin://tiny-moe; else SpecInvalid(ModelConfigMissing).
    """
    model = spec.model
    config, architecture, where = model.config, model.architecture, "spec.model.config"
    if config is None:
        models = (catalog or Catalog.default()).models
        catalog_name = getattr(model, "catalog_name", None)
        entry = models.get(catalog_name) if catalog_name else models.for_source(model.source)
        if entry is not None:
            config, where = entry.config, f"catalog model {entry.key}"
        elif model.source.startswith("builtin://tiny-moe"):
            architecture = architecture or "tiny"
    if config is not None and architecture and architecture != "tiny":
        model_type = config.get("model_type")
        if model_type and model_type != architecture:
            raise SpecInvalid(
                f"spec.model.architecture is {architecture} but {where} has model_type {model_type}; "
                "make them agree (or drop architecture)",
                reason="ArchitectureMismatch",
            )
    return model_facts(config, architecture)


def served_quantization(spec: Any, facts: ModelFacts) -> str:
    """The weights' format as served: ``spec.quantization`` when set, else (``none``) the checkpoint's own: an FP8
    checkpoint such as DeepSeek-V3's is loaded as FP8 by vLLM, so it plans at one byte a weight."""
    return facts.checkpoint_quantization if spec.quantization == "none" else spec.quantization


def plan_deployment(spec: Any, catalog: Catalog, name: str) -> DeploymentPlan:
    """Plan every pool of ``spec`` (a MoEDeploymentSpec); SpecInvalid naming the pool when one cannot be served."""
    facts = facts_for(spec, catalog)
    quant = served_quantization(spec, facts)
    pools = [_plan_pool(spec, pool, facts, catalog, quant) for pool in spec.pools]
    return DeploymentPlan(
        name=name,
        engine=spec.engine,
        quantization=quant,
        max_context_tokens=spec.model.max_context_tokens,
        max_batch_size=spec.serving.max_batch_size,
        model=ModelSummary.of(facts),
        pools=pools,
    )


def pool_capacity(spec: Any, pool: Any, catalog: Catalog) -> PoolCapacity:
    """Per-replica tokens/s by kind and US$ per replica-hour of one pool: what the autoscaler sizes pools with.

    ``pool`` is a PoolSpec of ``spec`` or its name. Cheaper than ``plan_deployment`` (no fit check, no placement);
    raises the same SpecInvalid as the plan for an unknown accelerator, a missing price or no parallel split.
    """
    if isinstance(pool, str):
        matches = [p for p in spec.pools if p.name == pool]
        if not matches:
            raise KeyError(pool)
        pool = matches[0]
    facts = facts_for(spec, catalog)
    try:
        acc = catalog.get(pool.accelerator)
        par = choose_parallelism(pool.devices_per_replica, facts)
        price = catalog.price(pool.accelerator, pool.price_per_device_hour, pool=pool.name)
    except SpecInvalid as exc:
        message = str(exc)
        raise SpecInvalid(message if message.startswith("pool ") else f"pool {pool.name!r}: {message}",
                          reason=exc.reason) from None
    return replica_capacity(
        facts, acc, pool.devices_per_replica, served_quantization(spec, facts), spec.serving.max_batch_size,
        spec.model.max_context_tokens, price, par,
    )


def _plan_pool(spec: Any, pool: Any, facts: ModelFacts, catalog: Catalog, quant: str) -> PoolPlan:
    where = f"pool {pool.name!r}: "
    try:
        acc = catalog.get(pool.accelerator)
        _check_engine(spec, pool, acc, quant)
        devices = pool.devices_per_replica
        par = choose_parallelism(devices, facts)
        ctx, batch = spec.model.max_context_tokens, spec.serving.max_batch_size
        fit = memory_fit(facts, quant, ctx, batch, devices, acc.memory_gib, dense_bytes(acc.vendor))
        if not fit.fits:
            raise SpecInvalid(
                not_fit_message(
                    facts, fit, pool=pool.name, accelerator=pool.accelerator, devices=devices,
                    quantization=quant, context_tokens=ctx, batch_size=batch, catalog=catalog,
                    valid_device_counts=valid_device_counts(facts),
                ),
                reason="ModelDoesNotFit",
            )
        price = catalog.price(pool.accelerator, pool.price_per_device_hour, pool=pool.name)
        t = replica_throughput(facts, acc, devices, quant, batch, ctx, par)
        cap = replica_capacity(facts, acc, devices, quant, batch, ctx, price, par)
        placement = initial_placement(facts, par, acc)
    except SpecInvalid as exc:
        message = str(exc)
        raise SpecInvalid(message if message.startswith("pool ") else where + message, reason=exc.reason) from None
    return PoolPlan(
        name=pool.name,
        accelerator=pool.accelerator,
        vendor=acc.vendor,
        devices_per_replica=devices,
        min_replicas=pool.min_replicas,
        max_replicas=pool.max_replicas,
        initial_replicas=pool.initial_replicas,
        fit=fit,
        parallelism=par,
        placement=placement,
        placement_summary=_summary(placement),
        capacity=cap,
        roofline=Roofline(
            prefill_bound=t.prefill_bound, decode_bound=t.decode_bound,
            decode_step_seconds=t.decode_step_seconds, compute_dtype=t.compute_dtype,
        ),
        cost=cost_summary(cap, price, spec.autoscaling.target_utilization),
    )


def _check_engine(spec: Any, pool: Any, acc: Any, quant: str) -> None:
    """Engine/quantization/hardware combinations that cannot run, with what to change (``quant``: as served)."""
    if acc.vendor == "cpu" and spec.engine == "vllm":
        raise SpecInvalid(
            f"engine vllm does not run on cpu pools; use engine torch for accelerator {pool.accelerator}",
            reason="EngineUnsupported",
        )
    stored = " (the checkpoint's own format, from its config.json quantization_config)" \
        if spec.quantization == "none" and quant != "none" else ""
    if quant == "fp8" and acc.vendor == "huawei":
        alt = "a 16-bit or W8A8 checkpoint" if stored else "quantization int8 (W8A8, as vllm-ascend serves it) or int4"
        raise SpecInvalid(f"{pool.accelerator} has no fp8 support and the weights are fp8{stored}; use {alt}",
                          reason="QuantizationUnsupported")
    if quant == "fp8" and spec.engine == "torch":
        raise SpecInvalid(
            f"engine torch cannot run fp8 weights{stored}; use engine vllm", reason="QuantizationUnsupported"
        )


def _summary(placement: Optional[dict[str, Any]]) -> PlacementSummary:
    layers = placement["layers"]
    counts = sorted({len(shard) for layer in layers for shard in layer})
    slots = sum(len(shard) for shard in layers[0])
    per_shard = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return PlacementSummary(
        shards=len(placement["shards"]), experts_per_shard=per_shard, redundant_slots=slots - placement["numExperts"]
    )
