"""The cost-aware policy: observation + pools + settings + history -> desired replicas per pool.

Pure: no I/O, no clock (``now`` is an argument), no kopf/kubernetes/ray imports. The operator's kopf
timer, ``moectl up`` and the simulator call ``decide`` unchanged. See docs/autoscaling.md for the rules.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from statistics import mean
from typing import Mapping, Sequence

from moe_operator.api.status import Condition  # the status's own type: one shape of a condition

from .burst import (judge, own_prefill_p95_s, prefill_rate, queue_work, recent, recurring, reserve_capacity,
                    reserve_window_s)
from .limits import (Cap, binding_cap, clamp_to_bounds, enforce_budget, fleet_cost_per_million, trend_ahead,
                     window_needs)
from .mix import capacity_of, cheapest_mix, cost_of, widest_mix
from .model import PoolModel, Settings
from .observation import Observation

MIN_NEED = 1e-6          # work units/s: "at least one replica" when scale to zero is not allowed
CORRECTION_RANGE = (0.25, 2.0)
EPS = 1e-9


@dataclass(frozen=True)
class History:
    """State carried between decisions (the caller stores the returned ``Decision.history``). Plain numbers,
    tuples and dicts only, so it can be written as JSON and read back.

    needs: (time s, mean need work units/s[, latency reserve work units/s]) samples within the longest
        stabilization window (restore.py and metric holds write 2-tuples: "this capacity was needed").
    desired: the last decided replicas per pool (None before the first decision).
    corrections: per-pool capacity factor learned at saturation (1.0 = planner's model is right).
    idle_since: time s since when no traffic was seen (None while busy).
    bursts: latency samples within the reserve window (burst.py): (time s, capacity that served the interval,
        TTFT queued work or None, TTFT floor s or None, TPOT work or None).
    backlog / queue: work units / requests queued at the last fresh decision; observed_at: its time (s);
        served_capacity: the ready
        capacity then (work units/s); work_per_request: the last measured work units per request;
        overloaded_at: the end (s) of the last interval whose work (arrivals and carried queue) exceeded the
        capacity that served it; over_since: the start (s) of the overload in progress (arrivals above that
        capacity), None when there is none; candidate: its latency sample while it may still be a burst (same
        shape as bursts), kept as a sample if it ends within the shortest cold start.
    trial: a scale-up made for latency awaiting its check: (time s, capacity asked for, then for TTFT and TPOT
        the capacity and queued work of the sample that sized it, or None, None).
    ttft_floor / tpot_floor: (time s, seconds) learned by a failed check: latency that capacity did not shorten,
        on top of the model's own-prefill estimate (TTFT) or of 0 (TPOT); the time is the last interval whose
        latency reached the floor, and the floor is forgotten a reserve window after it.
    demands: (time s, observed demand tokens/s) within the scale-down window (the $/1M cap's scale-up level).
    reserve_idle_since: time s since when the latency reserve has been ready and no interval needed it.
    """

    needs: tuple[tuple[float, ...], ...] = ()
    desired: Mapping[str, int] | None = None
    corrections: Mapping[str, float] = field(default_factory=dict)
    idle_since: float | None = None
    bursts: tuple[tuple, ...] = ()
    backlog: float | None = None
    queue: float | None = None
    observed_at: float | None = None
    served_capacity: float | None = None
    overloaded_at: float | None = None
    over_since: float | None = None
    candidate: tuple | None = None
    work_per_request: float | None = None
    trial: tuple | None = None
    ttft_floor: tuple[float, float] | None = None
    tpot_floor: tuple[float, float] | None = None
    demands: tuple[tuple[float, float], ...] = ()
    reserve_idle_since: float | None = None


@dataclass(frozen=True)
class Decision:
    """replicas: desired replicas per pool; held: True when metrics were stale/missing and nothing moved.

    need/capacity: work units/s; cost_per_hour: $/hour of ``replicas``; cost_per_million: $/1M tokens at the
    observed demand (None without traffic); unmet_tokens_per_s: arriving demand above the decided capacity;
    demand_tokens_per_s: the observed demand (tokens/s arriving: served + the queue's growth, at the served
    token mix) the $/1M figures and cap use.
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
    demand_tokens_per_s: float | None = None

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


def _held(obs: Observation | None, pools, settings, history, now, why: str) -> Decision:
    """Stale or missing metrics: keep the last decision (or the ready replicas); never scale down."""
    base = history.desired if history.desired is not None else (obs.ready if obs is not None else {})
    replicas = enforce_budget(pools, clamp_to_bounds(pools, base), settings.max_hourly_cost, history.corrections)
    cond = [Condition(type="BudgetLimited", status="Unknown", reason="MetricsUnavailable",
                      message=f"holding replicas: {why}")]
    capacity = capacity_of(pools, replicas, history.corrections)
    # The hold counts as "the held capacity was needed" in the stabilization windows, so the first fresh sample
    # after an outage cannot scale down at once: a low need must then last a whole window of fresh data.
    window = max(settings.scale_up_stabilization_s, settings.scale_down_stabilization_s)
    needs = tuple(n for n in history.needs if now - n[0] <= window) + ((now, capacity),)
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


def _floor(entry: tuple[float, float] | None, now: float, window_s: float) -> float:
    """A learned floor (s) while it is younger than the reserve window, else 0."""
    if entry is None or now - entry[0] > window_s + EPS:
        return 0.0
    return entry[1]


class _Mixer:
    """The integer mix search of one decision under bounds and the binding budget cap (limits.py)."""

    def __init__(self, pools, factors, cap: Cap | None, hourly: float | None, zero_ok: bool,
                 grow_cap: Cap | None = None):
        self.pools, self.factors, self.cap, self.hourly = pools, factors, cap, hourly
        self.grow_cap = grow_cap or cap
        self.grow_allowed = self.grow_cap.dollars_per_hour if self.grow_cap is not None else None
        self.lower = {p.name: p.min_replicas for p in pools}
        self.upper = {p.name: p.max_replicas for p in pools}
        self.floor_need = 0.0 if zero_ok else MIN_NEED
        self.allowed = cap.dollars_per_hour if cap is not None else None

    def cost(self, mix) -> float:
        return cost_of(self.pools, mix)

    def capacity(self, mix) -> float:
        return capacity_of(self.pools, mix, self.factors)

    def within(self, mix) -> bool:
        return self.allowed is None or self.cost(mix) <= self.allowed + EPS

    def cheapest_allowed(self, within: Mapping[str, int] | None = None) -> dict[str, int]:
        """The cheapest fleet the bounds allow (minReplicas; one replica unless scale to zero applies), removing
        only from ``within`` when it can; then maxHourlyCost (which wins over minReplicas)."""
        mix = None
        if within is not None:
            mix = cheapest_mix(
                self.pools,
                self.floor_need,
                self.lower,
                {k: max(v, self.lower[k]) for k, v in within.items()},
                self.factors,
            )
        mix = mix or cheapest_mix(self.pools, self.floor_need, self.lower, self.upper, self.factors) or dict(self.lower)
        return enforce_budget(self.pools, mix, self.hourly, self.factors)

    def shrink(self, mix: Mapping[str, int]) -> tuple[dict[str, int], bool]:
        """``mix`` cut to the cap, removing replicas only: the widest subset within the cap. Returns (mix, at the
        cheapest allowed fleet although it breaks the $/1M cap). maxHourlyCost wins over minReplicas; the $/1M cap
        never goes below the cheapest allowed fleet."""
        hourly = self.cap.reason == "MaxHourlyCost"
        cut = dict(mix) if self.within(mix) else None
        if cut is None:
            lower = {k: min(v, mix.get(k, 0)) for k, v in self.lower.items()}
            cut = widest_mix(self.pools, lower, mix, self.allowed, self.factors)
        if cut is None and hourly:
            zero = {p.name: 0 for p in self.pools}
            return widest_mix(self.pools, zero, mix, self.allowed, self.factors) or zero, False
        if cut is not None and (hourly or self.capacity(cut) >= self.floor_need):
            return cut, False
        floor = self.cheapest_allowed(within=mix)
        return floor, not self.within(floor)

    def grow(self, need: float, lower: Mapping[str, int], upper: Mapping[str, int]) -> dict[str, int] | None:
        """Cheapest mix within [lower, upper] reaching ``need`` under the cap; else the widest under the cap; None when
        even ``lower`` breaks the cap."""
        mix = cheapest_mix(self.pools, need, lower, upper, self.factors, self.grow_allowed)
        if mix is not None:
            return mix
        if self.grow_allowed is None:
            return {k: max(upper[k], lower[k]) for k in upper}
        return widest_mix(self.pools, lower, upper, self.grow_allowed, self.factors)


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
    served_work = obs.work_per_s(w)
    rps = obs.requests_per_s or 0.0
    queue = obs.queue_depth or 0.0
    ready_cap_model = capacity_of(pools, obs.ready)
    all_ready = all(obs.ready.get(p.name, 0) >= current.get(p.name, 0) for p in pools)
    # Saturated: a queue of at least one request per replica that is hurting latency (a burst that
    # drains within the SLO is not saturation and says nothing about capacity).
    slow = settings.ttft_p95_s is None or (obs.ttft_p95_s is not None and obs.ttft_p95_s > settings.ttft_p95_s)
    saturated = queue >= max(1.0, sum(obs.ready.values())) and slow and all_ready and ready_cap_model > 0
    factors = (
        _corrections(obs, pools, settings, history, served_work, saturated)
        if served_work > 0
        else dict(history.corrections)
    )
    for p in pools:
        if abs(factors.get(p.name, 1.0) - history.corrections.get(p.name, 1.0)) > 0.05:
            reasons.append(f"capacity of {p.name} corrected to {factors[p.name]:.2f}x model")

    # Demand: the arrival work rate. Work is conserved: what arrived = what was served + what the queue grew by.
    if rps > 0 and served_work > 0:
        per_request = served_work / rps
    else:
        per_request = history.work_per_request or min(
            (p.capacity for p in pools), default=1.0
        )  # unknown: a replica-second
    backlog = queue * per_request
    if history.queue is not None and history.observed_at is not None and now > history.observed_at:
        # the queue's growth in requests, at this interval's work per request (two readings of the queue's work
        # at different per-request estimates would turn a long queue's estimate noise into demand)
        arrival = max(0.0, served_work + (queue - history.queue) * per_request / (now - history.observed_at))
    else:   # no earlier queue reading: take the queue as built during the last interval (the larger demand)
        arrival = served_work + backlog / settings.interval_s
    tokens_per_work = obs.total_tokens_per_s / served_work if served_work > 0 else None
    # The observed demand in tokens/s (what the $/1M cap and figure use): the arrival rate at the served token mix.
    demand_tokens = arrival * tokens_per_work if tokens_per_work else obs.total_tokens_per_s
    busy = served_work > 0 or queue > 0

    # Idle tracking and scale to zero (waits idleSeconds plus the cold start it would cost to come back).
    idle_since = None if busy or rps > 0 else (history.idle_since if history.idle_since is not None else now)
    wake = min((p.cold_start_s for p in pools), default=0.0)
    zero_ok = settings.scale_to_zero and idle_since is not None and now - idle_since >= settings.idle_s + wake

    # Latency (burst.py): sample the work queued ahead of the slow request in an interval no earlier queue delayed
    # (or a burst shorter than an interval), keep the samples for the reserve window, and check latency scale-ups.
    window = reserve_window_s(pools, settings)
    ready_cap = capacity_of(pools, obs.ready, factors)
    served_cap = ready_cap if history.served_capacity is None else min(ready_cap, history.served_capacity)
    ttft_extra = _floor(history.ttft_floor, now, window)
    tpot_floor = _floor(history.tpot_floor, now, window)
    ttft_floor_entry = history.ttft_floor if ttft_extra > 0 else None
    tpot_floor_entry = history.tpot_floor if tpot_floor > 0 else None
    prompt_per_request = (obs.tokens_per_s or {}).get("prompt", 0.0) / rps if rps > 0 else 0.0
    # The part of TTFT capacity cannot shorten: measured where the runtime reports its queue wait (TTFT p95 less
    # the queue wait p95: what remains is the requests' own prefill), else estimated from the mean prompt.
    if obs.queue_wait_p95_s is not None and obs.ttft_p95_s is not None:
        own_prefill = max(0.0, obs.ttft_p95_s - obs.queue_wait_p95_s)
    else:
        own_prefill = own_prefill_p95_s(prompt_per_request, prefill_rate(pools, obs.ready, factors))
    carried_wait = (history.backlog or 0.0) / served_cap if served_cap > 0 else 0.0
    # the last decision's interval; a repeated or earlier ``now`` (coarse clock, clock step) counts as one interval
    interval = now - history.observed_at if history.observed_at is not None and now > history.observed_at \
        else settings.interval_s
    # Over: more work arrived than the capacity that served the interval could do. Draining: that, or the queue
    # carried into the interval still kept it busy. Either way the interval's latency is the queue's.
    over = arrival > served_cap * (1 + EPS)
    draining = over or arrival + (history.backlog or 0.0) / interval > served_cap * (1 + EPS)
    # The latencies reported now are of requests that arrived up to one p95 TTFT before this interval began: a
    # direct sample needs all of them to have arrived after the last draining interval ended.
    since = now - interval - (obs.ttft_p95_s or 0.0)
    after_overload = history.overloaded_at is None or history.overloaded_at <= since
    measurable = busy and rps > 0 and served_cap > 0 and window > 0

    def measure(ttft_extra_s: float, tpot_floor_s: float, carried_s: float) -> tuple | None:
        ttft_floor = own_prefill + ttft_extra_s
        k_ttft = queue_work(obs.ttft_p95_s, ttft_floor, carried_s, served_cap) if settings.ttft_p95_s else None
        k_tpot = queue_work(obs.tpot_p95_s, tpot_floor_s, 0.0, served_cap) if settings.tpot_p95_s else None
        if k_ttft is None and k_tpot is None:
            return None
        return (now, served_cap, k_ttft, ttft_floor if k_ttft is not None else None, k_tpot)

    # A burst: an overload that ends before capacity ordered at its start could have arrived (the shortest cold
    # start): only capacity held in reserve serves it. An overload that lasts longer is demand (the mean need
    # and the backlog drain follow it). The candidate is (start s, capacity that met it, largest TTFT work, TTFT
    # floor, largest TPOT work) over the burst's intervals; the queue carried within a burst is the burst's own.
    soonest = max(settings.interval_s, min((p.cold_start_s for p in pools), default=0.0))
    longest = max((p.cold_start_s for p in pools), default=0.0)
    cand = history.candidate
    over_since = (history.over_since if history.over_since is not None else now - interval) if over else None

    def merge(a: tuple | None, b: tuple | None) -> tuple | None:
        if a is None or b is None:
            return a or b

        def top(i):
            vals = [v for v in (a[i], b[i]) if v is not None]
            return max(vals) if vals else None
        return (a[0], a[1], top(2), a[3] if a[3] is not None else b[3], top(4))

    def sample(ttft_extra_s: float, tpot_floor_s: float) -> tuple | None:
        """This interval's latency sample: directly when nothing queued from before delayed it, or a burst that has
        just ended (this interval's arrivals fit again), sized on the largest queue any of its intervals showed."""
        if not measurable:
            return None
        if cand is not None and not over:
            ended = merge(cand, measure(ttft_extra_s, tpot_floor_s, 0.0))
            return (now,) + ended[1:]
        if not draining and after_overload:
            return measure(ttft_extra_s, tpot_floor_s, carried_wait)
        return None

    # The first overloaded interval after one that drained nothing starts a candidate (an overload that starts on
    # top of an earlier queue is that queue's, not a burst); later ones add to it, until it lasts too long.
    candidate = None
    fresh = history.overloaded_at is None or history.overloaded_at < (history.observed_at or now)
    if over and measurable and now - over_since <= soonest + EPS and (cand is not None or fresh):
        candidate = merge(cand, measure(ttft_extra, tpot_floor, carried_wait if cand is None else 0.0))

    bursts = recent(history.bursts, now, window)
    trial = history.trial
    new = sample(ttft_extra, tpot_floor)
    # A trial's replicas serve a cold start after it; then one interval to see them ready, one served entirely by
    # them, one for the ready count's lag. Past that its capacity was taken back (or never came): nothing to judge.
    if (
        trial is not None
        and now - trial[0] > longest + 3 * settings.interval_s
    ):
        trial = None
    if trial is not None and new is not None and new[1] >= trial[1] * (1 - 1e-6):
        _, _, c_ttft, k_ttft_before, c_tpot, k_tpot_before = trial
        failed = []
        for name, c_before, k_before, k_after in (("TTFT", c_ttft, k_ttft_before, new[2]),
                                                  ("TPOT", c_tpot, k_tpot_before, new[4])):
            if k_before is None or k_after is None:
                continue
            extra = judge(k_before, c_before, k_after, new[1])
            if extra is not None and extra > 0:
                failed.append((name, c_before, extra))
        trial = None
        for name, c_before, extra in failed:
            if name == "TTFT":
                ttft_extra += extra
                ttft_floor_entry = (now, ttft_extra)
            else:
                tpot_floor += extra
                tpot_floor_entry = (now, tpot_floor)
            reasons.append(f"latency check: {name} did not fall with capacity x{new[1] / c_before:.2f}: "
                           f"{extra:.2f}s of it is not queueing; the capacity added for it goes back")
        if failed:
            bursts = ()
            new = sample(ttft_extra, tpot_floor)
    if new is not None:
        bursts += (new,)
    k_ttft = [s[2] for s in bursts if s[2] is not None]
    k_tpot = [s[4] for s in bursts if s[4] is not None]
    ttft_floor_now = mean(s[3] for s in bursts if s[3] is not None) if k_ttft else own_prefill + ttft_extra
    lat_ttft = reserve_capacity(recurring(k_ttft), settings.ttft_p95_s, ttft_floor_now)
    lat_tpot = reserve_capacity(recurring(k_tpot), settings.tpot_p95_s, tpot_floor)
    latency_need = 0.0 if zero_ok else max(lat_ttft, lat_tpot)
    # Use it or lose it: a reserve that has been ready for a whole cold start without an interval that needed more
    # than the mean need (no burst it was kept for came back) goes back. Holding it longer pays for capacity that
    # serves nothing; buying it again later costs no more than one cold start of it (the ski-rental break-even).
    base_need = arrival / settings.target_utilization + (backlog / soonest if backlog > 0 else 0.0)
    reserve_idle_since = None
    if latency_need > base_need * (1 + EPS) and ready_cap >= latency_need * (1 - 1e-6):
        # used: the interval's latency sample needs more than the mean need, or its arrivals alone exceeded the
        # capacity the mean needs of the scale-down window keep (a burst the reserve absorbed, latency then fine)
        kept = max((n[1] for n in history.needs if now - n[0] <= settings.scale_down_stabilization_s + EPS),
                   default=base_need)
        used = arrival > kept * (1 + EPS) or (new is not None and max(
            reserve_capacity([new[2]] if new[2] is not None else [], settings.ttft_p95_s, new[3] or 0.0),
            reserve_capacity([new[4]] if new[4] is not None else [], settings.tpot_p95_s, tpot_floor)) > base_need)
        if not used:
            reserve_idle_since = history.reserve_idle_since if history.reserve_idle_since is not None else now
            hold = max(settings.interval_s, longest)
            if now - reserve_idle_since >= hold - EPS:
                reasons.append(f"latency reserve {latency_need:.0f} work units/s released: ready and unused for "
                               f"{now - reserve_idle_since:.0f}s (a cold start)")
                bursts, latency_need, reserve_idle_since = (), 0.0, None
    if trial is not None and latency_need > trial[1]:
        latency_need = trial[1]     # one unverified latency scale-up at a time: the next waits for its check
    # A learned floor stays while latency still reaches it (the long prompts are still there), else it expires.
    if ttft_floor_entry is not None and obs.ttft_p95_s is not None and obs.ttft_p95_s >= own_prefill + ttft_extra:
        ttft_floor_entry = (now, ttft_extra)
    if tpot_floor_entry is not None and obs.tpot_p95_s is not None and obs.tpot_p95_s >= tpot_floor:
        tpot_floor_entry = (now, tpot_floor)
    if busy and settings.ttft_p95_s is not None and obs.ttft_p95_s is not None and obs.ttft_p95_s > settings.ttft_p95_s:
        if own_prefill + ttft_extra >= settings.ttft_p95_s:
            reasons.append(f"TTFT p95 {obs.ttft_p95_s:.2f}s > {settings.ttft_p95_s:g}s is the requests' own prefill "
                           f"(~{own_prefill + ttft_extra:.2f}s at p95): capacity cannot shorten it")
        elif draining and new is None:
            reasons.append(
                f"TTFT p95 {obs.ttft_p95_s:.2f}s > {settings.ttft_p95_s:g}s while {arrival:.0f} work units/s "
                f"arrived (and {history.backlog or 0:.0f} work units queued) for the {served_cap:.0f} that "
                f"served it: a queue, sized on demand and backlog, not on latency"
            )
    if latency_need > 0:
        reasons.append(f"latency reserve {latency_need:.0f} work units/s: the work queued ahead of a p95 request "
                       f"that recurred in the last {window:.0f}s drains within the target (TTFT floor "
                       f"~{ttft_floor_now:.2f}s)")

    # Needs: arrival / targetUtilization (stabilized), the latency reserve, and the backlog's drain.
    mean_need = arrival / settings.target_utilization
    if not zero_ok:
        mean_need = max(mean_need, MIN_NEED)
    elif mean_need <= 0:
        reasons.append(
            f"idle {now - idle_since:.0f}s >= idleSeconds {settings.idle_s:g}s + cold start {wake:g}s: scale to zero"
        )
    lead = soonest   # capacity asked for now serves this much later
    fit_s = max(lead, settings.scale_down_stabilization_s)
    hist_window = max(settings.scale_up_stabilization_s, settings.scale_down_stabilization_s, fit_s)
    needs = tuple(n for n in history.needs if now - n[0] <= hist_window) + ((now, mean_need, latency_need),)
    need_up, need_down = window_needs(
        needs, now, settings.scale_up_stabilization_s, settings.scale_down_stabilization_s
    )
    need_down = max(need_down, latency_need)
    # Capacity asked for now serves a cold start later: when the mean need rises with a significant trend, size for
    # where the trend puts it then (least squares over the longer of a cold start and the scale-down window).
    ahead = None if zero_ok else trend_ahead([(n[0], n[1]) for n in needs if len(n) > 2 and now - n[0] <= fit_s + EPS],
                                             now, lead)
    if ahead is not None and ahead > max(need_up, need_down):
        reasons.append(f"trend: mean need {mean_need:.0f} rising to ~{ahead:.0f} work units/s in {lead:.0f}s "
                       f"(a cold start)")
        need_up, need_down = max(need_up, ahead), max(need_down, ahead)
    drain_s = soonest
    drain_need = arrival + backlog / drain_s if backlog > 0 else 0.0
    if drain_need > max(need_up, need_down):
        reasons.append(f"backlog: {queue:.0f} queued requests ({backlog:.0f} work units) drain within {drain_s:.0f}s")
    need_up, need_down = max(need_up, drain_need), max(need_down, drain_need)
    need = max(mean_need, latency_need, drain_need, ahead or 0.0)

    # Budgets are caps on what is asked for (limits.py); the mix search respects them, then maxHourlyCost again.
    # The $/1M cap moves with the observed demand: a fleet over it at the current demand is cut at once, but
    # replicas are added only within the cap at the lowest demand of the scale-down window, so a noisy demand does
    # not add replicas one interval and cut them the next; except once arrivals have exceeded the capacity serving
    # them for longer than a cold start (demand, by the burst rule above: its queue uses whatever capacity comes).
    demands = tuple((t, d) for t, d in history.demands if now - t <= settings.scale_down_stabilization_s + EPS) + \
        ((now, demand_tokens),)
    cap = binding_cap(settings, demand_tokens)
    low = demand_tokens if over and now - over_since > soonest + EPS else min(d for _, d in demands)
    grow_cap = binding_cap(settings, low, f"the lowest observed {low:.0f} tokens/s of the last "
                                          f"{settings.scale_down_stabilization_s:.0f}s") if low < demand_tokens else cap
    mixer = _Mixer(pools, factors, cap, settings.max_hourly_cost, zero_ok, grow_cap)
    lower, upper = mixer.lower, mixer.upper
    cur_cap = capacity_of(pools, current, factors)
    margin = 1.0 + settings.hysteresis / 2   # land mid-band so the next small wobble moves nothing
    add_lower = {p.name: min(max(lower[p.name], current[p.name]), upper[p.name]) for p in pools}
    rm_upper = {p.name: max(lower[p.name], min(current[p.name], upper[p.name])) for p in pools}
    if cur_cap < need_up * (1 - EPS):
        direction, target_need = "up", need_down * margin
        if cheapest_mix(pools, target_need, add_lower, upper, factors, mixer.grow_allowed) is None and \
                cheapest_mix(pools, need_up, add_lower, upper, factors, mixer.grow_allowed) is not None:
            target_need = need_up          # the window's need does not fit, the current need does
        bounds = (add_lower, upper)
    elif cur_cap > need_down * (1 + settings.hysteresis) and cost_of(pools, current) > 0:
        direction, target_need = "down", need_down * margin
        bounds = (lower, rm_upper)
    else:
        direction, target_need, bounds = "hold", need_down, None

    if bounds is None:
        mix = dict(current)
    else:
        mix = mixer.grow(target_need, *bounds)
        if direction == "down" and (mix is None or cost_of(pools, mix) >= cost_of(pools, current) - EPS):
            mix = dict(current)
        if mix is None:            # even the current fleet breaks the cap
            mix = dict(current)
    mix, cheapest_over_cap = mixer.shrink(mix) if cap is not None else (mix, False)
    mix = enforce_budget(pools, mix, settings.max_hourly_cost, factors)
    capacity = capacity_of(pools, mix, factors)
    if direction == "up" and cheapest_mix(pools, target_need, add_lower, upper, factors) is None:
        reasons.append("maxReplicas reached")

    conditions: list[Condition] = []
    unmet = max(0.0, arrival - capacity) * (tokens_per_work or 1.0) if busy else 0.0
    uncapped = cheapest_mix(pools, target_need, add_lower if direction == "up" else lower, upper, factors) \
        or {k: max(upper[k], add_lower[k]) for k in upper}
    want = capacity_of(pools, uncapped, factors) if bounds is not None else max(cur_cap, target_need)
    cost = cost_of(pools, mix)
    cpm = fleet_cost_per_million(cost, demand_tokens)
    if direction == "up" and mixer.grow_cap is not None and capacity < min(want, target_need) * (1 - EPS):
        cap = mixer.grow_cap       # what limited the scale-up
    if cap is not None and (cheapest_over_cap or (capacity < min(want, target_need) * (1 - EPS))
                            or cost_of(pools, current) > cap.dollars_per_hour + EPS):
        if cheapest_over_cap:
            msg = (f"{cap.says} binds: no fleet at or above minReplicas meets it; holding the cheapest allowed fleet "
                   f"(${cost:.2f}/h, " + (f"${cpm:.3f}/1M" if cpm is not None else "no demand") + ")")
        else:
            msg = (f"{cap.says} binds: ${cost:.2f}/h buys {capacity:.0f} of the {target_need:.0f} work units/s "
                   f"needed")
        msg += f"; unmet demand ~{unmet:.0f} tokens/s"
        conditions.append(Condition(type="BudgetLimited", status="True", reason=cap.reason, message=msg))
        reasons.append(msg)
    else:
        limits = []
        if settings.max_hourly_cost is not None:
            limits.append(f"of ${settings.max_hourly_cost:g}/h")
        if settings.max_cost_per_million is not None:
            limits.append(
                "$" + (f"{cpm:.3f}" if cpm is not None else "-") + f"/1M of ${settings.max_cost_per_million:g}/1M"
            )
        conditions.append(Condition(type="BudgetLimited", status="False", reason="WithinBudget",
                                    message=f"${cost:.2f}/h " + ", ".join(limits)))

    # A scale-up made for latency is checked on the first interval its replicas serve entirely.
    if direction == "up" and capacity > cur_cap * (1 + EPS) and latency_need > max(mean_need, drain_need) * (1 + EPS):
        if trial is None:   # judged against the samples that sized it (the recurring level, burst.judge)
            def sizing(i):
                ranked = sorted((b for b in bursts if b[i] is not None), key=lambda b: b[i])
                return ranked[-2] if len(ranked) > 1 else None
            top_ttft, top_tpot = sizing(2), sizing(4)
            trial = (now, capacity_of(pools, mix, factors),
                     top_ttft[1] if top_ttft else None, top_ttft[2] if top_ttft else None,
                     top_tpot[1] if top_tpot else None, top_tpot[4] if top_tpot else None)

    changed = mix != current
    summary = ", ".join(f"{k}={v}" for k, v in mix.items())
    if changed:
        direction = "up" if capacity > cur_cap else "down"
        reasons.insert(0, f"scale {direction} to {summary}: demand {arrival:.0f} work units/s, need {target_need:.0f} "
                          f"(targetUtilization {settings.target_utilization:g}), capacity {capacity:.0f}")
    else:
        reasons.insert(0, f"keep {summary}: need {need:.0f} work units/s, capacity {capacity:.0f}")
    new_history = History(needs=needs, desired=mix, corrections=factors, idle_since=idle_since, bursts=bursts,
                          backlog=backlog, queue=queue, observed_at=now, served_capacity=ready_cap,
                          overloaded_at=now if draining else history.overloaded_at, over_since=over_since,
                          candidate=candidate, demands=demands,
                          work_per_request=per_request if rps > 0 and served_work > 0 else history.work_per_request,
                          trial=trial, ttft_floor=ttft_floor_entry, tpot_floor=tpot_floor_entry,
                          reserve_idle_since=reserve_idle_since)
    return Decision(mix, reasons, conditions, False, need, capacity, cost, cpm, unmet, new_history, demand_tokens)
