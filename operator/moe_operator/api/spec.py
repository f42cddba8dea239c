"""The MoEDeployment spec: what a platform engineer writes.

These models are the single source of truth: the CRD schema (``crds/``) and ``docs/api.md`` are generated
from them by ``python -m moe_operator.api.generate``. Every field has a description; ranges and enums here
become OpenAPI constraints the API server enforces; cross-field rules are CEL (see ``rules.py``).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import Field, StringConstraints

from .rules import ApiModel, Rule

DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"
# Kubernetes label syntax (apimachinery validation.IsQualifiedName / IsValidLabelValue): what the API server would
# refuse in the rendered pods is refused here, at admission, instead of failing every reconcile of the RayService.
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# (nodeSelector keys are not checked here: a CEL regex over map keys has no length bound for the API server's cost
# estimate; a key the API server refuses in the RayService is reported as SpecInvalid RayServiceRejected.)
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"  # optional DNS-subdomain prefix and /
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"  # the name: at most 63 characters
)
LABEL_KEY_OR_EMPTY = "^(" + LABEL_KEY[1:-1] + ")?$"   # a toleration's empty key with Exists matches every taint
IMAGE = r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$"   # an OCI reference's alphabet: ASCII, no spaces
LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE)]

Architecture = Literal["mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "tiny"]
Engine = Literal["torch", "vllm"]
Quantization = Literal["none", "fp8", "int8", "int4"]


class ModelSpec(ApiModel):
    """Which model to serve and the facts planning needs about it."""

    source: str = Field(
        min_length=1,
        max_length=512,
        pattern=r"^(pvc://|s3://|gs://|hf://|builtin://|/).+",
        description="Where the weights live: pvc://<claim>/<path>, s3://bucket/prefix, gs://bucket/prefix, "
        "hf://org/name (pre-downloaded into the image or a cache volume), an absolute path in the image, "
        "or builtin://tiny-moe (generated locally, for tests and laptops).",
    )
    architecture: Optional[Architecture] = Field(
        default=None,
        description="Model family. Optional: config's model_type or the catalog entry gives it; when set, it must "
        "agree.",
    )
    catalog_name: Optional[str] = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="A model of the operator's model catalog (e.g. deepseek-v3; `moectl models` lists them) whose "
        "planning facts to use. Not needed when source is an hf:// id the catalog knows; not with config.",
    )
    config: Optional[dict[str, Any]] = Field(
        default=None,
        description="The model's Hugging Face config.json (or the subset planning needs), inline, for a model the "
        "catalog does not hold. The operator cannot read weights from the cluster, so it plans from this, "
        "else from the catalog.",
    )
    served_model_name: Optional[str] = Field(
        default=None,
        max_length=128,
        description="Model id in the OpenAI API (/v1/models). Defaults to the MoEDeployment's name.",
    )
    max_context_tokens: int = Field(
        default=4096, ge=128, le=1048576, description="Context length (tokens) the KV cache is sized for."
    )

    RULES = (
        Rule(
            cel="has(self.config) || has(self.catalogName) || self.source.startsWith('hf://') "
            "|| self.source.startsWith('builtin://') || (has(self.architecture) && self.architecture == 'tiny')",
            message="model needs its planning facts: set spec.model.catalogName (moectl models lists the catalog), "
            "use an hf:// source the catalog knows, or paste the model's config.json under spec.model.config",
            check=lambda m: m.config is not None or m.catalog_name is not None or m.source.startswith("hf://")
            or m.source.startswith("builtin://") or m.architecture == "tiny",
        ),
        Rule(
            cel="!(has(self.config) && has(self.catalogName))",
            message="set spec.model.catalogName or spec.model.config, not both: config is the model's own "
            "config.json, catalogName takes the catalog's",
            check=lambda m: m.config is None or m.catalog_name is None,
        ),
    )


class ServingSpec(ApiModel):
    """Per-replica batching and admission limits."""

    max_batch_size: int = Field(default=16, ge=1, le=1024, description="Sequences decoded together per replica.")
    max_queue: int = Field(
        default=64, ge=1, le=100000, description="Requests waiting per replica before new ones get HTTP 429."
    )


class DiskTierSpec(ApiModel):
    """A prefix-cache tier on disk that survives replica restarts (DeepSeek-style context caching)."""

    enabled: bool = Field(default=False, description="Keep prompt KV blocks on disk as well as in memory.")
    size: str = Field(default="10Gi", pattern=QUANTITY, description="Disk budget per replica, a Kubernetes quantity.")
    storage_class_name: Optional[str] = Field(
        default=None, max_length=253,
        description="StorageClass of each pool's shared cache claim, required with the disk tier: it must provide "
        "ReadWriteMany volumes (NFS, CephFS, EFS, Filestore, Azure Files)."
    )
    path: str = Field(
        default="/var/cache/moe", pattern=r"^/.*", max_length=256,
        description="Mount path of the cache volume (torch engine; vLLM pods get none)."
    )


class CacheSpec(ApiModel):
    """Prompt-prefix (context) caching: repeated prefixes are read back instead of recomputed."""

    prefix: bool = Field(default=True, description="Enable prefix caching.")
    block_tokens: int = Field(default=64, ge=16, le=4096, description="Tokens per cached block (the hashing unit).")
    memory_bytes: int = Field(
        default=268435456, ge=0, le=2**44, description="Memory tier budget per replica, bytes (0 disables it)."
    )
    disk_tier: DiskTierSpec = Field(default_factory=DiskTierSpec, description="Optional disk tier.")


class Toleration(ApiModel):
    """A Kubernetes toleration (core/v1 Toleration), for tainted accelerator nodes."""

    key: Optional[str] = Field(default=None, max_length=317, pattern=LABEL_KEY_OR_EMPTY,
                               description="Taint key (label-key syntax); empty with Exists matches all.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: Optional[str] = Field(default=None, max_length=63, pattern=LABEL_VALUE,
                                 description="Taint value for Equal (label-value syntax).")
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = Field(
        default=None, description="Taint effect to tolerate; empty tolerates all effects."
    )
    toleration_seconds: Optional[int] = Field(
        default=None, ge=0, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class PoolSpec(ApiModel):
    """One accelerator type serving the model. A replica never mixes accelerator types."""

    name: str = Field(min_length=1, max_length=40, pattern=DNS_LABEL, description="Pool name, a DNS label, unique.")
    accelerator: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="Catalog key: cpu, nvidia-h100, nvidia-h800, nvidia-h200, nvidia-a100-80gb, nvidia-l40s, "
        "nvidia-l4, ascend-910b, ascend-910c, ascend-310p, or one the cluster's catalog ConfigMap adds.",
    )
    devices_per_replica: int = Field(default=1, ge=1, le=128, description="Accelerators per model replica.")
    min_replicas: int = Field(
        default=1, ge=0, le=1000, description="Fewest replicas the autoscaler keeps (0 allows scale to zero)."
    )
    max_replicas: int = Field(default=1, ge=1, le=1000, description="Most replicas the autoscaler may run.")
    replicas: Optional[int] = Field(
        default=None,
        ge=0,
        le=1000,
        description="Starting replicas (and fixed count without autoscaling). Defaults to minReplicas.",
    )
    price_per_device_hour: Optional[float] = Field(
        default=None,
        ge=0,
        le=1000,
        description="US$ per device-hour; overrides the catalog (required where it has no price).",
    )
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=32,
        description="Extra node labels the pool's pods require (added to the catalog's); Kubernetes label syntax.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=16, description="Tolerations for the pool's pods."
    )
    image: Optional[str] = Field(default=None, max_length=512, pattern=IMAGE,
                                 description="Runtime image; defaults per vendor and engine.")
    cold_start_seconds: int = Field(
        default=120, ge=0, le=7200, description="Seconds from scale-up to serving; the autoscaler weighs it."
    )

    RULES = (
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must not exceed maxReplicas",
            check=lambda p: p.min_replicas <= p.max_replicas,
        ),
        Rule(
            cel="!has(self.replicas) || (self.replicas >= self.minReplicas && self.replicas <= self.maxReplicas)",
            message="replicas must lie between minReplicas and maxReplicas",
            check=lambda p: p.replicas is None or p.min_replicas <= p.replicas <= p.max_replicas,
        ),
    )

    @property
    def initial_replicas(self) -> int:
        return self.min_replicas if self.replicas is None else self.replicas


class PrometheusSource(ApiModel):
    """Read metrics from a Prometheus server."""

    url: str = Field(pattern=r"^https?://.+", max_length=512, description="Prometheus base URL.")


class ScrapeSource(ApiModel):
    """Scrape the runtime's /metrics directly (no Prometheus needed)."""

    url: str = Field(pattern=r"^https?://.+", max_length=512, description="URL of the runtime's /metrics.")


class MetricsSpec(ApiModel):
    """Where the autoscaler reads demand and latency from."""

    prometheus: Optional[PrometheusSource] = Field(default=None, description="Prometheus source (production).")
    scrape: Optional[ScrapeSource] = Field(default=None, description="Direct scrape source (local, tests).")
    stale_after_seconds: int = Field(
        default=120, ge=10, le=3600, description="Metrics older than this are stale: the autoscaler holds."
    )

    RULES = (
        Rule(
            cel="!(has(self.prometheus) && has(self.scrape))",
            message="choose one metrics source: prometheus or scrape, not both",
            check=lambda m: not (m.prometheus is not None and m.scrape is not None),
        ),
    )


class SloSpec(ApiModel):
    """Latency targets; above them the autoscaler adds capacity even if the token model says enough."""

    ttft_p95_seconds: float = Field(
        default=2.0, gt=0, le=600, description="95th percentile time to first token, seconds."
    )
    tpot_p95_seconds: float = Field(
        default=0.1, gt=0, le=60, description="95th percentile time per output token, seconds."
    )


class BudgetSpec(ApiModel):
    """Money limits. Unset fields do not bind."""

    max_cost_per_million_tokens: Optional[float] = Field(
        default=None, gt=0, le=10000, description="US$ per 1M tokens the fleet may cost at the observed load."
    )
    max_hourly_cost: Optional[float] = Field(
        default=None, gt=0, le=10000000, description="US$ per hour the fleet never exceeds."
    )


class ScaleToZeroSpec(ApiModel):
    """Release every replica after a quiet spell (pools with minReplicas 0 only)."""

    enabled: bool = Field(default=False, description="Allow scaling to zero.")
    idle_seconds: int = Field(
        default=900, ge=60, le=604800, description="Seconds without demand before scaling to zero."
    )


class AutoscalingSpec(ApiModel):
    """How the autoscaler sizes each pool."""

    enabled: bool = Field(default=True, description="Run the autoscaler; when false replicas stay as set.")
    interval_seconds: int = Field(default=30, ge=5, le=3600, description="Seconds between decisions.")
    metrics: MetricsSpec = Field(default_factory=MetricsSpec, description="Metrics source.")
    slo: SloSpec = Field(default_factory=SloSpec, description="Latency targets.")
    budget: BudgetSpec = Field(default_factory=BudgetSpec, description="Cost limits.")
    target_utilization: float = Field(
        default=0.7, gt=0, le=1, description="Capacity must be at least demand divided by this (headroom)."
    )
    scale_up_stabilization_seconds: int = Field(
        default=0, ge=0, le=3600, description="Seconds a higher recommendation must persist before scaling up."
    )
    scale_down_stabilization_seconds: int = Field(
        default=300, ge=0, le=86400, description="Seconds a lower recommendation must persist before scaling down."
    )
    burst_reserve_seconds: int | None = Field(
        default=None, ge=0, le=86400,
        description="Seconds the burst reserve remembers a burst: capacity that bursts shorter than an interval "
        "needed (estimated from TTFT above target) is kept while bursts recur within this time, then decays. "
        "Unset: 5 x the longest pool coldStartSeconds, at least scaleDownStabilizationSeconds; 0 turns it off.",
    )
    scale_to_zero: ScaleToZeroSpec = Field(default_factory=ScaleToZeroSpec, description="Scale-to-zero behaviour.")


class RebalanceSpec(ApiModel):
    """Live expert rebalancing (engine torch): move hot experts to balance device time while serving (issue 7)."""

    enabled: bool = Field(
        default=False,
        description="Periodically recompute the expert placement from the runtime's per-expert token counts and "
        "apply it to the running replicas. Engine torch only (vLLM balances experts itself with its EPLB).",
    )
    interval_seconds: int = Field(
        default=300,
        ge=10,
        le=86400,
        description="Seconds between looks at the runtime's expert loads (the load window).",
    )
    min_gain: float = Field(
        default=0.05, ge=0, lt=1,
        description="Least relative drop of the MoE step time worth a move, a fraction in [0, 1) (0.05 = 5% faster).",
    )
    cooldown_seconds: int = Field(
        default=900, ge=0, le=604800, description="Seconds after a rebalance before the next one may start."
    )
    redundant_slots: int = Field(
        default=0, ge=0, le=4096,
        description="Extra expert copies per MoE layer and replica for hot experts (each costs one expert's memory "
        "on some shard).",
    )


class MoEDeploymentSpec(ApiModel):
    """A Mixture-of-Experts model served on one or more accelerator pools."""

    model: ModelSpec = Field(description="The model.")
    engine: Engine = Field(
        default="vllm",
        description="vllm: vLLM / vllm-ascend through Ray Serve LLM (production GPUs/NPUs). "
        "torch: the built-in engine (CPU, tests, small models).",
    )
    quantization: Quantization = Field(
        default="none",
        description="Weight quantization: none (the checkpoint as published: 16-bit, or FP8 where its config.json "
        "says so, as DeepSeek-V3/R1), fp8, int8 or int4.",
    )
    serving: ServingSpec = Field(default_factory=ServingSpec, description="Batching and admission limits.")
    cache: CacheSpec = Field(default_factory=CacheSpec, description="Prefix (context) caching.")
    pools: list[PoolSpec] = Field(
        min_length=1, max_length=8, description="Accelerator pools; each gets its own worker group."
    )
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec, description="Autoscaling policy.")
    rebalance: RebalanceSpec = Field(
        default_factory=RebalanceSpec, description="Live expert rebalancing (engine torch)."
    )

    RULES = (
        Rule(
            cel="self.pools.all(p, self.pools.exists_one(q, q.name == p.name))",
            message="pool names must be unique",
            check=lambda s: len({p.name for p in s.pools}) == len(s.pools),
        ),
        Rule(
            cel="self.engine != 'torch' || self.quantization != 'fp8'",
            message="engine torch supports quantization none, int8 or int4; use engine vllm for fp8",
            check=lambda s: not (s.engine == "torch" and s.quantization == "fp8"),
        ),
        Rule(
            cel="!self.autoscaling.scaleToZero.enabled || self.pools.exists(p, p.minReplicas == 0)",
            message="scaleToZero needs at least one pool with minReplicas 0",
            check=lambda s: not s.autoscaling.scale_to_zero.enabled or any(p.min_replicas == 0 for p in s.pools),
        ),
        Rule(
            cel="self.engine == 'torch' || !self.rebalance.enabled",
            message="rebalance is for engine torch; engine vllm balances experts itself (vLLM's EPLB): "
            "set rebalance.enabled false or engine torch",
            check=lambda s: s.engine == "torch" or not s.rebalance.enabled,
        ),
    )
