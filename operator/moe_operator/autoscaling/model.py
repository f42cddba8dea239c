"""The autoscaler's own small input types: pools, work weights and settings.

Work units: every token kind costs a different amount of accelerator work. One *work unit* is the work of
one generated (decode) token. A prompt token computed from scratch (cache miss) costs ``prompt`` work units
and a prompt token served from the prefix cache costs ``cached_prompt`` work units. With a pool's measured or
planned capacities (tokens/s per replica for each kind) the weights are ``decode_tps / prefill_tps`` and
``decode_tps / cached_prefill_tps``; a pool's capacity in work units/s per replica is its ``decode_tps``.
All of the policy's arithmetic is in work units/s, so demand and capacity are single numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

TOKEN_KINDS = ("prompt", "cached_prompt", "generated")


@dataclass(frozen=True)
class WorkWeights:
    """Work units per token of each kind (generated = 1 by definition)."""

    prompt: float = 0.2
    cached_prompt: float = 0.01
    generated: float = 1.0

    def work(self, tokens: Mapping[str, float]) -> float:
        """Work units for a mapping kind -> tokens (or tokens/s -> work units/s)."""
        return (self.prompt * tokens.get("prompt", 0.0)
                + self.cached_prompt * tokens.get("cached_prompt", 0.0)
                + self.generated * tokens.get("generated", 0.0))

    @classmethod
    def from_capacity(cls, prefill_tps: float, decode_tps: float, cached_prefill_tps: float) -> "WorkWeights":
        """Weights from one replica's capacity per token kind (tokens/s each)."""
        if min(prefill_tps, decode_tps, cached_prefill_tps) <= 0:
            raise ValueError("capacities must be > 0 tokens/s")
        return cls(prompt=decode_tps / prefill_tps, cached_prompt=decode_tps / cached_prefill_tps, generated=1.0)


@dataclass(frozen=True)
class PoolModel:
    """One accelerator pool as the policy sees it.

    price_per_hour: $ per replica-hour (devicesPerReplica x pricePerDeviceHour).
    capacity: work units/s one replica sustains at full load (generated-token equivalents/s).
    tpot_at_capacity_s: time per output token of a replica running at full load (maxBatchSize / decode_tps).
    """

    name: str
    price_per_hour: float
    capacity: float
    min_replicas: int = 0
    max_replicas: int = 8
    cold_start_s: float = 120.0
    tpot_at_capacity_s: float = 0.05
    prefill_tps: float = 0.0

    def __post_init__(self):
        if self.capacity <= 0:
            raise ValueError(f"pool {self.name}: capacity must be > 0 work units/s")
        if self.price_per_hour < 0:
            raise ValueError(f"pool {self.name}: price must be >= 0 $/hour")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"pool {self.name}: need 0 <= minReplicas <= maxReplicas")

    @property
    def price_per_work(self) -> float:
        """$/hour per work unit/s of capacity: the order in which pools are filled (cheapest first)."""
        return self.price_per_hour / self.capacity


@dataclass(frozen=True)
class Settings:
    """spec.autoscaling as numbers (seconds, $/hour, $/1M tokens); None = no limit/target."""

    interval_s: float = 30.0
    stale_after_s: float = 120.0
    ttft_p95_s: float | None = 2.0
    tpot_p95_s: float | None = 0.1
    max_cost_per_million: float | None = None
    max_hourly_cost: float | None = None
    target_utilization: float = 0.7
    scale_up_stabilization_s: float = 0.0
    scale_down_stabilization_s: float = 300.0
    scale_to_zero: bool = False
    idle_s: float = 900.0
    burst_reserve_s: float | None = (
        None  # burst reserve memory (s); None = 5 x longest cold start (>= down window), 0 = off
    )
    # Policy tuning (not in the spec; documented in docs/autoscaling.md).
    hysteresis: float = 0.15          # scale down only when capacity exceeds need by this fraction
    backlog_drain_s: float = 60.0     # the simulator baselines' drain time for queued work (not the policy's)
    correction_alpha: float = 0.3     # EWMA weight of a new saturation measurement
    weights: WorkWeights = field(default_factory=WorkWeights)

    def __post_init__(self):
        if not 0 < self.target_utilization <= 1:
            raise ValueError("targetUtilization must be in (0, 1]")
        if self.burst_reserve_s is not None and self.burst_reserve_s < 0:
            raise ValueError("burstReserveSeconds must be >= 0")
