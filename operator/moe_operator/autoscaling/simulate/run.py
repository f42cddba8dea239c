"""Replay a trace for each policy and collect the figures ``moectl simulate`` reports.

Units: cost $, rates work units/s or tokens/s, times s. Every policy starts with the replicas it would pick
for the first interval's true demand, already warm, so the comparison is not about the first cold start.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..model import PoolModel, Settings
from ..observation import Observation
from .fleet import Replay
from .replicas import DEFAULT_MAX_QUEUE, ReplicaReplay, make_router, profiles_for
from .serving import ServingProfile
from .metrics import (asked_cost_rate, attainable_fluid, attainable_replica, attainment_over,
                      budget_violation_seconds, cost_per_million_violation_seconds, floor_cost_rate, peak_hourly_cost)
from .optimum import clairvoyant_cold_start, interval_demands, offline_optimum
from .policies import (CheapestSinglePool, HpaUtilization, Ours, RayServeOngoing, Schedule, StaticPeak,
                       WvaCostGreedy)
from .traces import Trace

POLICIES = ("ours", "static-peak", "hpa", "ray-serve", "cheapest-pool", "wva-greedy", "optimum", "optimum-cold-start")
REFERENCES = ("optimum", "optimum-cold-start")   # clairvoyant schedules, not online policies
MODELS = ("replica", "fluid")   # serving models: per-replica engines (default) or one fluid FIFO (docs/simulate.md)
DRAIN_S = 900.0     # after the last arrival, replay at most this long for the queue to empty


@dataclass
class PolicyResult:
    name: str
    total_cost: float
    served_tokens: float
    slo_attainment: float
    scale_actions: int
    unmet_tokens: float
    mean_replicas: dict[str, float]
    peak_replicas: dict[str, int]
    series: list = field(repr=False, default_factory=list)
    met: np.ndarray | None = field(repr=False, default=None)   # per request (trace order): SLO met
    attainable_slo_attainment: float | None = None   # attainment over attainable requests (metrics.attainable)
    unattainable_requests: int = 0
    peak_hourly_cost: float = 0.0                     # $/h, highest cost rate of the replicas asked for
    peak_paid_hourly_cost: float = 0.0                # $/h, the same with replicas still draining (replica model)
    budget_violation_s: float = 0.0                   # seconds over maxHourlyCost
    cost_per_million_violation_s: float | None = None  # seconds over maxCostPerMillionTokens (None: no limit)
    attainable: np.ndarray | None = field(repr=False, default=None)   # per request: attainable at all
    cache_hit_ratio: float | None = None              # cached prompt tokens / prompt tokens, as served
    ttft_p50_s: float | None = None                   # over the requests that got a first token
    ttft_p95_s: float | None = None
    tpot_p50_s: float | None = None                   # over the requests that finished
    tokens_by_pool: dict[str, dict[str, float]] | None = None   # {pool: {kind: tokens served}} (replica model)
    router: str | None = None                         # the replica model's router
    router_full: int = 0                              # requests every replica was full for (429 in the live router)
    cache_blocks: dict[str, int] | None = None        # prefix-cache blocks per replica, by pool (per-replica caches)

    @property
    def cost_per_million(self) -> float | None:
        return self.total_cost * 1e6 / self.served_tokens if self.served_tokens > 0 else None

    def to_json(self) -> dict:
        return {"totalCost": round(self.total_cost, 4),
                "costPerMillionTokens": None if self.cost_per_million is None else round(self.cost_per_million, 5),
                "sloAttainment": round(self.slo_attainment, 5),
                "scaleActions": self.scale_actions,
                "unmetDemandTokens": round(self.unmet_tokens, 1),
                "meanReplicas": {k: round(v, 3) for k, v in self.mean_replicas.items()},
                "peakReplicas": self.peak_replicas,
                "attainableSloAttainment": None if self.attainable_slo_attainment is None
                else round(self.attainable_slo_attainment, 5),
                "unattainableRequests": self.unattainable_requests,
                "peakHourlyCost": round(self.peak_hourly_cost, 4),
                "peakPaidHourlyCost": round(self.peak_paid_hourly_cost, 4),
                "budgetViolationSeconds": round(self.budget_violation_s, 1),
                "costPerMillionViolationSeconds": None if self.cost_per_million_violation_s is None
                else round(self.cost_per_million_violation_s, 1),
                "cacheHitRatio": _round(self.cache_hit_ratio, 5),
                "ttftP50Seconds": _round(self.ttft_p50_s, 4),
                "ttftP95Seconds": _round(self.ttft_p95_s, 4),
                "tpotP50Seconds": _round(self.tpot_p50_s, 5),
                "tokensByPool": None if self.tokens_by_pool is None
                else {pool: {"prompt": round(t["prompt"]), "cachedPrompt": round(t["cached_prompt"]),
                             "generated": round(t["generated"])} for pool, t in self.tokens_by_pool.items()},
                "router": self.router,
                "routerFullRequests": self.router_full}


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def _percentile(values: np.ndarray, q: float) -> float | None:
    ok = values[np.isfinite(values)]
    return float(np.percentile(ok, q)) if len(ok) else None


def first_observation(trace: Trace, interval: float, pools: Sequence[PoolModel]) -> Observation:
    """The true demand of the first interval, as if measured (used to start every policy warm)."""
    m = trace.arrival_s < interval
    return Observation(
        0.0,
        {
            "prompt": float(trace.prompt[m].sum() / interval),
            "cached_prompt": float(trace.cached[m].sum() / interval),
            "generated": float(trace.output[m].sum() / interval),
        },
        requests_per_s=float(m.sum() / interval),
        queue_depth=0.0,
        ready={p.name: 0 for p in pools},
    )


def replay(trace: Trace, pools: Sequence[PoolModel], settings: Settings, policy: Callable, cold_start: bool = True,
           on_second: Callable[[], None] | None = None,
           profiles: dict[str, ServingProfile] | None = None, router: str = "least-loaded",
           cache_blocks: int | dict[str, int] | None = None, max_queue: int = DEFAULT_MAX_QUEUE,
           per_replica_cache: bool = True) -> PolicyResult:
    """Run one policy over the trace: through the per-replica model when ``profiles`` (pool -> ServingProfile)
    are given, with a fresh ``router`` (replicas.ROUTERS) and ``cache_blocks`` per replica (used when the trace
    records prompt blocks and ``per_replica_cache``), else through the fluid model."""
    interval = settings.interval_s
    ttft, tpot = settings.ttft_p95_s or np.inf, settings.tpot_p95_s or np.inf
    if profiles is not None:
        r = ReplicaReplay(trace, list(pools), settings.weights, ttft, tpot, cold_start=cold_start, profiles=profiles,
                          router=make_router(router, max_queue=max_queue), cache_blocks=cache_blocks,
                          per_replica_cache=per_replica_cache)
    else:
        r = Replay(trace, list(pools), settings.weights, ttft, tpot, cold_start=cold_start)
    r.fleet.cold_start = False
    r.apply(policy(first_observation(trace, interval, pools), r, 0.0), 0.0)
    r.fleet.cold_start = cold_start
    r.actions = 0
    t, next_decision, end = 0.0, interval, trace.duration_s + DRAIN_S
    while t <= end:
        r.step(t)
        t += 1.0
        if on_second:
            on_second()
        if t > trace.duration_s and r.done:
            break
        if t >= next_decision:
            r.apply(policy(r.observation(t, interval), r, t), t)
            next_decision += interval
    names = [p.name for p in pools]
    asked = np.array([[s[3].get(n, 0) for n in names] for s in r.series], dtype=float)
    served = float(sum(s[5] for s in r.series))  # work units; convert to tokens by the trace's mix
    tokens_per_work = trace.total_tokens / float(r.work.sum()) if r.work.sum() > 0 else 0.0
    per_replica_cache = profiles is not None and r.blocks is not None
    # with per-replica caches a request's work depends on its replica's hits, not on the trace's: count tokens
    served_tokens = r.served_tokens() if per_replica_cache else served * tokens_per_work
    met = r.slo_met()
    rates = asked_cost_rate(r.series, pools)
    # which requests an unloaded replica of some pool could meet at all, in the model that ran
    if profiles is not None:
        ok = attainable_replica(trace.prompt, trace.cached, trace.output, pools, profiles, settings.ttft_p95_s,
                                settings.tpot_p95_s)
    else:
        ok = attainable_fluid(trace.prompt, trace.cached, pools, settings.ttft_p95_s, settings.tpot_p95_s)
    return PolicyResult(
        name=getattr(policy, "name", "policy"),
        total_cost=r.cost,
        served_tokens=served_tokens,
        slo_attainment=float(met.mean()) if len(met) else 1.0,
        scale_actions=r.actions,
        unmet_tokens=r.unmet_tokens(),
        mean_replicas={n: float(asked[:, i].mean()) for i, n in enumerate(names)},
        peak_replicas={n: int(asked[:, i].max()) for i, n in enumerate(names)},
        series=r.series,
        met=met,
        attainable_slo_attainment=attainment_over(met, ok),
        unattainable_requests=int((~ok).sum()),
        peak_hourly_cost=peak_hourly_cost(rates),
        peak_paid_hourly_cost=peak_hourly_cost(np.array([s[4] for s in r.series])),
        budget_violation_s=budget_violation_seconds(rates, settings.max_hourly_cost),
        cost_per_million_violation_s=cost_per_million_violation_seconds(
            r.series,
            settings.max_cost_per_million,
            interval,
            tokens_per_work,
            floor_cost_rate(pools, keep_one=not settings.scale_to_zero),
        ),
        attainable=ok,
        cache_hit_ratio=r.cache_hit_ratio() if profiles is not None else trace.cache_hit_ratio,
        ttft_p50_s=_percentile(r.ttft, 50),
        ttft_p95_s=_percentile(r.ttft, 95),
        tpot_p50_s=_percentile(r.tpot, 50),
        tokens_by_pool={k: dict(zip(("prompt", "cached_prompt", "generated"), map(float, v)))
                        for k, v in r.tokens_by_pool.items()} if profiles is not None else None,
        router=router if profiles is not None else None,
        router_full=int(getattr(r.router, "full", 0)) if profiles is not None else 0,
        cache_blocks=dict(r.cache_blocks) if per_replica_cache else None,
    )


def make_policy(name: str, trace: Trace, pools: Sequence[PoolModel], settings: Settings, max_batch_size: int):
    work = settings.weights.prompt * trace.prompt + settings.weights.cached_prompt * trace.cached + trace.output
    if name == "ours":
        return Ours(pools, settings)
    if name == "static-peak":
        peak, _ = interval_demands(trace.arrival_s, work, settings.interval_s, settings.interval_s, trace.duration_s)
        return StaticPeak(pools, settings, float(peak.max()))
    if name == "hpa":
        return HpaUtilization(pools, settings)
    if name == "ray-serve":
        return RayServeOngoing(pools, settings, target_ongoing=max(1.0, max_batch_size * settings.target_utilization))
    if name == "cheapest-pool":
        return CheapestSinglePool(pools, settings)
    if name == "wva-greedy":
        return WvaCostGreedy(pools, settings)
    raise ValueError(name)


def simulate(trace: Trace, pools: Sequence[PoolModel], settings: Settings, policies: Sequence[str],
             max_batch_size: int = 16, on_second: Callable[[], None] | None = None, model: str = "replica",
             profiles: dict[str, ServingProfile] | None = None, max_context_tokens: int | None = None,
             router: str = "least-loaded", cache_blocks: int | dict[str, int] | None = None,
             max_queue: int = DEFAULT_MAX_QUEUE, per_replica_cache: bool = True) -> dict:
    """All requested policies plus the optimum's figures: {"results": {name: PolicyResult}, "optimum": Optimum,
    "cold_start_optimum": Optimum or None (computed only when "optimum-cold-start" is requested)}. Both references
    honour ``settings.max_hourly_cost`` and ``settings.max_cost_per_million`` (optimum.py).

    model: "replica" (per-replica engines; ``profiles`` per pool, default from the pools' capacities with
    ``max_batch_size`` slots and ``max_context_tokens`` of KV per slot; ``router``, ``cache_blocks``,
    ``max_queue`` and ``per_replica_cache`` as in ``replay``) or "fluid" (one FIFO, the old model)."""
    if model not in MODELS:
        raise ValueError(f"unknown serving model {model!r}; use one of {', '.join(MODELS)}")
    if model == "replica":
        defaults = profiles_for(pools, max_batch_size, weights=settings.weights, max_context_tokens=max_context_tokens)
        profiles = {**defaults, **(profiles or {})}
    else:
        profiles = None
    routing = ({"router": router, "cache_blocks": cache_blocks, "max_queue": max_queue,
                "per_replica_cache": per_replica_cache} if profiles is not None else {})
    work = settings.weights.prompt * trace.prompt + settings.weights.cached_prompt * trace.cached + trace.output
    window = min(10.0, max(1.0, settings.ttft_p95_s or 10.0))   # queues must drain within the TTFT target
    budgets = {"max_hourly_cost": settings.max_hourly_cost, "max_cost_per_million": settings.max_cost_per_million,
               "tokens": trace.prompt + trace.cached + trace.output}
    opt = offline_optimum(list(pools), trace.arrival_s, work, settings.interval_s, window_s=window,
                          horizon_s=trace.duration_s, keep_one=not settings.scale_to_zero, **budgets)
    results, cold = {}, None
    for name in policies:
        if name == "optimum":
            results[name] = replay(trace, pools, settings, Schedule(opt.plan, settings.interval_s), cold_start=False,
                                   on_second=on_second, profiles=profiles, **routing)
        elif name == "optimum-cold-start":  # clairvoyant too, but every replica pays its cold start
            cold = clairvoyant_cold_start(list(pools), trace.arrival_s, work, settings.interval_s, window_s=window,
                                          horizon_s=trace.duration_s, keep_one=not settings.scale_to_zero,
                                          **budgets)
            sched = Schedule(cold.plan, settings.interval_s)
            sched.name = name
            results[name] = replay(trace, pools, settings, sched, cold_start=True, on_second=on_second,
                                   profiles=profiles, **routing)
        else:
            results[name] = replay(trace, pools, settings, make_policy(name, trace, pools, settings, max_batch_size),
                                   on_second=on_second, profiles=profiles, **routing)
    return {"results": results, "optimum": opt, "cold_start_optimum": cold}
