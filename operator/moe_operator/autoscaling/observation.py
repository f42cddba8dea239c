"""Observation: what the metrics sources say about one MoEDeployment at one moment.

Rates are tokens/s (per kind, see model.TOKEN_KINDS) and requests/s averaged over the source's window;
latencies are p95 seconds over the same window; ``observed_at`` is a Unix time in seconds.
``served_by_pool`` (optional) lets the policy correct each pool's capacity from throughput observed at
saturation. ``ready``: replicas serving per pool as the runtime reports them (gauge ``moe_ready_replicas``);
a pool absent from it is unknown to the runtime, and the caller fills it from its own count (the operator from
the RayCluster, ``moectl up`` from Serve). Missing values are None, never zero: zero means "measured zero".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from .model import TOKEN_KINDS, WorkWeights


@dataclass(frozen=True)
class Observation:
    observed_at: float
    tokens_per_s: Mapping[str, float] | None = None
    requests_per_s: float | None = None
    queue_depth: float | None = None
    running: float | None = None
    ttft_p95_s: float | None = None
    tpot_p95_s: float | None = None
    queue_wait_p95_s: float | None = None   # arrival -> the request's own prefill began (vLLM's queue time)
    ready: Mapping[str, int] = field(default_factory=dict)
    served_by_pool: Mapping[str, Mapping[str, float]] | None = None

    def age(self, now: float) -> float:
        """Seconds since the observation was taken."""
        return max(0.0, now - self.observed_at)

    @property
    def complete(self) -> bool:
        """True when the demand figures the policy cannot do without are present."""
        return self.tokens_per_s is not None and self.queue_depth is not None

    @property
    def total_tokens_per_s(self) -> float:
        return sum((self.tokens_per_s or {}).get(k, 0.0) for k in TOKEN_KINDS)

    @property
    def cache_hit_ratio(self) -> float | None:
        """Cached prompt tokens / all prompt tokens, None without prompt traffic."""
        t = self.tokens_per_s or {}
        prompt = t.get("prompt", 0.0) + t.get("cached_prompt", 0.0)
        return t.get("cached_prompt", 0.0) / prompt if prompt > 0 else None

    def work_per_s(self, weights: WorkWeights) -> float:
        """Served demand in work units/s."""
        return weights.work(self.tokens_per_s or {})
