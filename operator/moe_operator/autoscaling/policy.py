"""The cost-aware policy: observation + pools + settings + history -> desired replicas per pool.

Pure: no I/O, no clock (``now`` is an argument), no kopf/kubernetes/ray imports. The operator's kopf
timer, ``moectl up`` and the simulator call ``decide`` unchanged. See docs/autoscaling.md for the rules.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from .burst import burst_quantile, burst_sample, recent_bursts, reserve_window_s
from .limits import clamp_to_bounds, enforce_budget, refused_pools, window_needs
from .mix import capacity_of, cheapest_mix, cost_of, widest_mix
from .model import PoolModel, Settings
from .observation import Observation

MIN_NEED = 1e-6          # work units/s: "at least one replica" when scale to zero is not allowed
CORRECTION_RANGE = (0.25, 2.0)


@dataclass(frozen=True)
class Condition:
    type: str            # "BudgetLimited" (the status condition types are fixed by moe_operator.api)
    status: str          # "True" | "False" | "Unknown" (metrics missing: the decision is a hold)
    reason: str
    message: str


@dataclass(frozen=True)
class History:
    """State carried between decisions (the caller stores the returned ``Decision.history``).

    needs: (time s, need work units/s) samples within the longest stabilization window.
    desired: the last decided replicas per pool (None before the first decision).
    corrections: per-pool capacity factor learned at saturation (1.0 = planner's model is right).
    slo_boost: extra capacity fraction added by the SLO guard.
    idle_since: time s since when no traffic was seen (None while busy).
    bursts: (time s, capacity work units/s) burst samples within the burst reserve window (burst.py).
    """

    needs: tuple[tuple[float, float], ...] = ()
    desired: Mapping[str, int] | None = None
    corrections: Mapping[str, float] = field(default_factory=dict)
    slo_boost: float = 0.0
    idle_since: float | None = None
    bursts: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class Decision:
    """replicas: desired replicas per pool; held: True when metrics were stale/missing and nothing moved.

    need/capacity: work units/s; cost_per_hour: $/hour of ``replicas``; cost_per_million: $/1M tokens at the
    observed demand (None without traffic); unmet_tokens_per_s: demand the budget left unserved.
    """

    replicas: dict[str, int]
    reasons: list[str]
    conditions: list[Condition]
    held: bool
    need: float
    capacity: float
    cost_per_hour: float
    cost_per_million: float | None
    unmet_tokens_per_s: float
    history: History

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def _held(obs: Observation | None, pools, settings, history, now, why: str) -> Decision:
    """Stale or missing metrics: keep the last decision (or the ready replicas); never scale down."""
    base = history.desired if history.desired is not None else (obs.ready if obs is not None else {})
    replicas = enforce_budget(pools, clamp_to_bounds(pools, base), settings.max_hourly_cost, history.corrections)
    cond = [Condition("BudgetLimited", "Unknown", "MetricsUnavailable", f"holding replicas: {why}")]
    capacity = capacity_of(pools, replicas, history.corrections)
    # The hold counts as "the held capacity was needed" in the stabilization windows, so the first fresh sample
    # after an outage cannot scale down at once: a low need must then last a whole window of fresh data.
    window = max(settings.scale_up_stabilization_s, settings.scale_down_stabilization_s)
    needs = tuple((t, n) for t, n in history.needs if now - t <= window) + ((now, capacity),)
    return Decision(replicas, [f"hold: {why}"], cond, True, 0.0, capacity, cost_of(pools, replicas), None, 0.0,
                    replace(history, desired=replicas, needs=needs))


def _corrections(obs: Observation, pools: Sequence[PoolModel], settings: Settings, history: History,
                 demand_work: float, saturated: bool) -> dict[str, float]:
    """Per-pool capacity factors: observed throughput at saturation / modelled capacity, smoothed (EWMA)."""
    f = dict(history.corrections)
    lo, hi = CORRECTION_RANGE
    a = settings.correction_alpha
    w = settings.weights
    for p in pools:
        ready = obs.ready.get(p.name, 0)
        if ready <= 0:
            continue
        if obs.served_by_pool is not None and p.name in obs.served_by_pool:
            served = w.work(obs.served_by_pool[p.name])
        else:  # share the total in proportion to modelled capacity
            total = capacity_of(pools, obs.ready, f)
            served = demand_work * ready * p.capacity * f.get(p.name, 1.0) / total if total > 0 else 0.0
        measured = served / (ready * p.capacity)
        old = f.get(p.name, 1.0)
        if saturated or measured > old:   # saturated: what it did is what it can; above model: proven capacity
            f[p.name] = min(hi, max(lo, (1 - a) * old + a * measured))
    return f


def decide(observation: Observation | None, pools: Sequence[PoolModel], settings: Settings,
           history: History | None = None, now: float = 0.0) -> Decision:
    """Desired replicas per pool for the MoEDeployment whose pools and settings are given.

    observation: latest metrics (None = missing); now: Unix seconds. Returns a Decision whose ``history``
    the caller passes back next time.
    """
    history = history or History()
    obs = observation
    if obs is None:
        return _held(None, pools, settings, history, now, "no metrics")
    if not obs.complete:
        return _held(obs, pools, settings, history, now, "metrics incomplete (token rates or queue depth missing)")
    if obs.age(now) > settings.stale_after_s:
        return _held(obs, pools, settings, history, now,
                     f"metrics stale: {obs.age(now):.0f}s old > staleAfterSeconds {settings.stale_after_s:.0f}")

    reasons: list[str] = []
    w = settings.weights
    current = clamp_to_bounds(pools, history.desired if history.desired is not None else obs.ready)
    demand_work = obs.work_per_s(w)
    tokens = obs.total_tokens_per_s
    tokens_per_work = tokens / demand_work if demand_work > 0 else None
    queue = obs.queue_depth or 0.0
    ready_cap_model = capacity_of(pools, obs.ready)
    all_ready = all(obs.ready.get(p.name, 0) >= current.get(p.name, 0) for p in pools)
    # Saturated: a queue of at least one request per replica that is hurting latency (a burst that
    # drains within the SLO is not saturation and says nothing about capacity).
    slow = settings.ttft_p95_s is None or (obs.ttft_p95_s is not None and obs.ttft_p95_s > settings.ttft_p95_s)
    saturated = queue >= max(1.0, sum(obs.ready.values())) and slow and all_ready and ready_cap_model > 0
    factors = _corrections(obs, pools, settings, history, demand_work, saturated) if demand_work > 0 else dict(history.corrections)
    for p in pools:
        if abs(factors.get(p.name, 1.0) - history.corrections.get(p.name, 1.0)) > 0.05:
            reasons.append(f"capacity of {p.name} corrected to {factors[p.name]:.2f}x model")

    # Backlog: queued requests must drain within backlog_drain_s on top of the arrival rate.
    backlog = 0.0
    if queue > 0:
        per_request = demand_work / obs.requests_per_s if obs.requests_per_s else min(p.capacity for p in pools)
        backlog = queue * per_request / settings.backlog_drain_s

    # SLO guard: latency above target adds capacity even when the token model says enough.
    busy = demand_work > 0 or queue > 0
    violated = []
    if busy and settings.ttft_p95_s is not None and obs.ttft_p95_s is not None and obs.ttft_p95_s > settings.ttft_p95_s:
        violated.append(f"TTFT p95 {obs.ttft_p95_s:.2f}s > {settings.ttft_p95_s:g}s")
    if busy and settings.tpot_p95_s is not None and obs.tpot_p95_s is not None and obs.tpot_p95_s > settings.tpot_p95_s:
        violated.append(f"TPOT p95 {obs.tpot_p95_s * 1000:.0f}ms > {settings.tpot_p95_s * 1000:.0f}ms")
    if violated:
        boost = min(settings.slo_boost_max, history.slo_boost + settings.slo_boost_step)
        reasons.append("SLO guard: " + ", ".join(violated) + f" -> +{boost:.0%} capacity")
    else:
        boost = max(0.0, history.slo_boost - settings.slo_boost_step / 2)

    # Idle tracking and scale to zero (waits idleSeconds plus the cold start it would cost to come back).
    idle_since = None if busy or (obs.requests_per_s or 0) > 0 else (history.idle_since if history.idle_since is not None else now)
    wake = min((p.cold_start_s for p in pools), default=0.0)
    zero_ok = settings.scale_to_zero and idle_since is not None and now - idle_since >= settings.idle_s + wake

    need = (demand_work + backlog) / settings.target_utilization * (1.0 + boost)
    # Burst reserve: keep the capacity recent sub-interval bursts needed (burst.py), through short gaps.
    burst_window = reserve_window_s(pools, settings)
    bursts = recent_bursts(history.bursts, now, burst_window)   # the one window filter (kept as the history)
    sample = None
    if busy:
        prefill_tps = max((p.prefill_tps for p in pools), default=0.0)
        per_request = (obs.tokens_per_s or {}).get("prompt", 0.0) / obs.requests_per_s if obs.requests_per_s else 0.0
        prefill = per_request / prefill_tps if prefill_tps > 0 else 0.0
        sample = burst_sample(capacity_of(pools, obs.ready, factors), obs.ttft_p95_s, settings.ttft_p95_s, prefill)
    if sample is not None and burst_window > 0:
        bursts += ((now, sample),)
    # the same headroom as the mean need: a sample is the capacity that would just have met the p95 target
    reserve = burst_quantile(bursts, settings.burst_quantile) / settings.target_utilization
    if reserve > need and not zero_ok:
        need = reserve
        reasons.append(f"burst reserve: {reserve:.0f} work units/s kept for bursts of the last {burst_window:.0f}s")
    if not zero_ok:
        need = max(need, MIN_NEED)
    elif need <= 0:
        reasons.append(f"idle {now - idle_since:.0f}s >= idleSeconds {settings.idle_s:g}s + cold start {wake:g}s: scale to zero")

    window = max(settings.scale_up_stabilization_s, settings.scale_down_stabilization_s)
    needs = tuple((t, n) for t, n in history.needs if now - t <= window) + ((now, need),)
    need_up, need_down = window_needs(needs, now, settings.scale_up_stabilization_s, settings.scale_down_stabilization_s)

    # $/1M ceiling: refuse replicas of pools whose marginal replica breaks it (minReplicas still apply).
    upper = {p.name: p.max_replicas for p in pools}
    for name, c in refused_pools(pools, factors, settings, tokens_per_work).items():
        upper[name] = min(upper[name], next(p.min_replicas for p in pools if p.name == name))
        reasons.append(f"{name} refused: ${c:.3f}/1M tokens > maxCostPerMillionTokens {settings.max_cost_per_million:g}")
    lower = {p.name: p.min_replicas for p in pools}
    budget = settings.max_hourly_cost

    cur_cap = capacity_of(pools, current, factors)
    target_need = need
    add_lower = {p.name: min(max(lower[p.name], current[p.name]), upper[p.name]) for p in pools}
    margin = 1.0 + settings.hysteresis / 2   # land mid-band so the next small wobble moves nothing
    if cur_cap < need_up * (1 - 1e-9):
        target_need = need_down * margin
        mix = cheapest_mix(pools, target_need, add_lower, upper, factors, budget)
        if mix is None:  # cannot reach the whole window need: the current need is enough
            mix = cheapest_mix(pools, need_up, add_lower, upper, factors, budget)
            target_need = need_up if mix is not None else target_need
        direction = "up"
    elif cur_cap > need_down * (1 + settings.hysteresis) and cost_of(pools, current) > 0:
        target_need = need_down * margin
        rm_upper = {p.name: max(lower[p.name], min(current[p.name], upper[p.name])) for p in pools}
        mix = cheapest_mix(pools, target_need, lower, rm_upper, factors, budget)
        if mix is None or cost_of(pools, mix) >= cost_of(pools, current) - 1e-9:
            mix = dict(current)
        direction = "down"
    else:
        mix = dict(current)
        direction = "hold"

    conditions: list[Condition] = []
    unmet = 0.0
    if mix is None:  # max replicas or budget binds
        full = cheapest_mix(pools, target_need, lower, upper, factors, None)
        if budget is not None:
            mix = widest_mix(pools, add_lower, upper, budget, factors)
            if mix is None:
                mix = widest_mix(pools, {p.name: 0 for p in pools}, upper, budget, factors) or {p.name: 0 for p in pools}
                reasons.append("minReplicas cost more than maxHourlyCost: budget wins")
        else:
            mix = {p.name: max(upper[p.name], add_lower[p.name]) for p in pools}
        if full is None:
            reasons.append("maxReplicas reached")
    mix = enforce_budget(pools, mix, budget, factors)
    capacity = capacity_of(pools, mix, factors)
    if capacity < target_need * (1 - 1e-9) and busy:
        unmet = max(0.0, demand_work + backlog - capacity) * (tokens_per_work or 1.0)
    unbudgeted = cheapest_mix(pools, target_need, lower, upper, factors, None) or {p.name: max(upper[p.name], add_lower[p.name]) for p in pools}
    budget_binds = budget is not None and capacity < target_need * (1 - 1e-9) and \
        capacity_of(pools, unbudgeted, factors) > capacity * (1 + 1e-9)
    if budget_binds:
        msg = (f"maxHourlyCost ${budget:g}/h allows {capacity:.0f} work units/s of {target_need:.0f} needed; "
               f"unmet demand ~{unmet:.0f} tokens/s")
        conditions.append(Condition("BudgetLimited", "True", "MaxHourlyCost", msg))
        reasons.append(msg)
    else:
        conditions.append(Condition("BudgetLimited", "False", "WithinBudget",
                                    f"${cost_of(pools, mix):.2f}/h" + (f" of ${budget:g}/h" if budget is not None else "")))

    changed = mix != current
    summary = ", ".join(f"{k}={v}" for k, v in mix.items())
    if changed:
        reasons.insert(0, f"scale {direction} to {summary}: demand {demand_work:.0f} work units/s, need {target_need:.0f} "
                          f"(targetUtilization {settings.target_utilization:g}), capacity {capacity:.0f}")
    else:
        reasons.insert(0, f"keep {summary}: need {need:.0f} work units/s, capacity {capacity:.0f}")
    cost = cost_of(pools, mix)
    cpm = cost * 1e6 / (tokens * 3600.0) if tokens > 0 else None
    new_history = History(needs=needs, desired=mix, corrections=factors, slo_boost=boost, idle_since=idle_since,
                          bursts=bursts)
    return Decision(mix, reasons, conditions, False, need, capacity, cost, cpm, unmet, new_history)
