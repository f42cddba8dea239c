"""Per-replica serving model of a fleet (``moectl simulate``'s ``replica`` model), event-driven inside each second.

Same interface as ``fleet.Replay`` (the ``fluid`` model), documented in docs/simulate.md. The rules:
  * every ready replica runs a continuous-batching engine (``serving.ServingProfile``): ``max_batch`` slots,
    ``kv_tokens`` of KV cache, prefill at ``prefill_tps`` / ``cached_prefill_tps``, decode steps of
    ``step_s(b)`` seconds over the b sequences decoding;
  * a request is routed when it arrives (at the start of its second, counts as of then) to one ready replica by
    the router (default ``least_loaded``: fewest waiting + running, ties to the lowest index = oldest replica)
    and waits in that replica's FIFO queue; with no replica ready it waits in the fleet's queue;
  * admission (FIFO, no overtaking): a free slot and KV for prompt + output tokens (the whole sequence is
    reserved at admission, so the engine never preempts: an approximation of vLLM, which admits on the
    prompt and preempts the newest sequence when KV runs out); a request larger than the whole KV budget is
    admitted alone on an empty replica;
  * prefill is first-come-first-served over admitted requests; while any prefill is pending the engine time is
    shared as in vLLM's chunked prefill: each step carries ``prefill_chunk_tokens`` of prompt beside the decode
    batch, so prefill gets ``chunk_t / (step_s(b) + chunk_t)`` of the time and decode the rest (all of it with
    no decode running); the prefill produces the first token (TTFT = arrival -> end of its prefill, plus the
    profile's ``ttft_overhead_s`` spent outside the engine);
  * all decoding sequences of a replica advance together, one token per step; TPOT = (finish - first token) /
    (output - 1) from the actual step times (0 for output <= 1);
  * a replica asked for is paid from that second and serves after its pool's cold start; at scale-down the
    pool's starting replicas are cancelled first (latest first), then the least-loaded ready ones (ties: newest)
    stop taking requests, their queued requests are re-routed, and they are paid until their running requests
    finish (drain);
  * a request meets the SLO when TTFT <= ttft target and TPOT <= tpot target;
  * prefix cache: when the trace records prompt blocks (Mooncake), every replica keeps its own LRU of block ids
    (``cache_blocks`` per pool, default the profile's KV tokens / the trace's block size). A request's cached
    tokens are its leading blocks that ITS replica holds when it is admitted (looked up at admission, as vLLM's
    scheduler does), and its blocks enter that cache at the end of its prefill (when they are computed), the
    prompt's head last so that LRU eviction takes a prompt's tail first (as vLLM frees blocks). A replica
    removed loses its cache, a new one starts empty. Without blocks, the trace's ``cached`` (one fleet-wide
    unlimited cache) is used as given;
  * routers: ``least_loaded`` (default), ``RandomRouter`` (seeded) and ``PrefixAwareRouter``, which ranks the
    replicas with the live router's own code (``moe_runtime.routing.rank`` and ``PrefixIndex``).

Speed: a replica's batch changes only at admissions, prefill ends and finishes, so each second is a handful of
closed-form segments per busy replica (one decode clock per replica: the tokens every decoding sequence has
generated since the replica started; a sequence finishes when the clock reaches its join value + output - 1).
"""
from __future__ import annotations

import heapq
import random
from collections import OrderedDict, deque
from dataclasses import replace
from typing import Callable, Mapping, Sequence

import numpy as np
from moe_runtime import routing

from ..model import PoolModel, WorkWeights
from ..observation import Observation
from .fleet import ReplayResults
from .serving import ServingProfile

DEFAULT_CONTEXT_TOKENS = 32768   # KV per batch slot when neither kv_tokens nor a context length is given
DEFAULT_MAX_QUEUE = 64           # serving.maxQueue's default: requests a replica queues beyond its batch slots
ROUTERS = ("least-loaded", "prefix-aware", "random")


def profiles_for(pools: Sequence[PoolModel], max_batch_size: int, kv_tokens_per_replica: int | None = None, *,
                 weights: WorkWeights | None = None, max_context_tokens: int | None = None,
                 **profile_fields) -> dict[str, ServingProfile]:
    """Default ServingProfiles from the PoolModels: full-batch decode = the pool's capacity (work units/s = decode
    tokens/s at ``max_batch_size``), prefill = the pool's prefill_tps (else capacity / weights.prompt), cached
    prefill = capacity / weights.cached_prompt. KV: ``kv_tokens_per_replica``, else max_batch_size x
    max_context_tokens (what the planner's memory fit reserves), else x DEFAULT_CONTEXT_TOKENS.
    ``profile_fields`` (e.g. prefill_chunk_tokens, fixed_share) go to ServingProfile.from_capacity / the profile."""
    w = weights or WorkWeights()
    kv = kv_tokens_per_replica or max_batch_size * (max_context_tokens or DEFAULT_CONTEXT_TOKENS)
    fixed = profile_fields.pop("fixed_share", None)
    out = {}
    for p in pools:
        prefill = p.prefill_tps if p.prefill_tps > 0 else p.capacity / w.prompt
        cached = p.capacity / w.cached_prompt if w.cached_prompt > 0 else float("inf")
        kw = {} if fixed is None else {"fixed_share": fixed}
        prof = ServingProfile.from_capacity(prefill, p.capacity, cached, int(max_batch_size), int(kv), **kw)
        if profile_fields:
            prof = replace(prof, **profile_fields)
        out[p.name] = prof
    return out


class _Replica:
    """One replica's engine state (times in s, tokens)."""

    __slots__ = ("pool", "pi", "prof", "serial", "ready_at", "waiting", "prefill", "pf_rem", "dec", "clock", "kv",
                 "nrun", "last_event", "rid", "cache")

    def __init__(self, pool: PoolModel, pi: int, prof: ServingProfile, serial: int, ready_at: float):
        self.pool, self.pi, self.prof, self.serial, self.ready_at = pool, pi, prof, serial, ready_at
        self.waiting: deque = deque()   # routed, not admitted (request indices, arrival order)
        self.prefill: deque = deque()   # admitted, prefill pending; the head is being prefilled
        self.pf_rem = 0.0               # engine seconds of prefill left for the head
        self.dec: list = []             # heap of (clock value at which it finishes, request index)
        self.clock = 0.0                # decode clock: tokens generated by every decoding sequence so far
        self.kv = 0.0                   # KV tokens reserved by admitted requests
        self.nrun = 0                   # admitted, unfinished (prefilling + decoding): slots in use
        self.last_event = 0.0           # time of the last finish (drain end)
        self.rid = f"{pool.name}-{serial}"   # the id routers know it by
        self.cache: OrderedDict = OrderedDict()   # prefix cache: block ids, least recently used first

    @property
    def load(self) -> int:
        return len(self.waiting) + self.nrun


# (replicas taking requests, request index) -> position in that list. A router may also have ``bind(replay)``
# (called once, before it routes: what it may read of the trace and the pools) and ``forget(replica)`` (the
# replica was removed: its cache went with it).
Router = Callable[[list, int], int]


def least_loaded(replicas: list, i: int) -> int:
    """Fewest waiting + running requests; ties to the lowest index (the oldest replica)."""
    best, best_load = 0, None
    for k, r in enumerate(replicas):
        ld = len(r.waiting) + r.nrun
        if best_load is None or ld < best_load:
            best, best_load = k, ld
            if ld == 0:
                break
    return best


class RandomRouter:
    """Uniformly at random among the replicas taking requests; seeded, so one replay routes the same way twice."""

    name = "random"

    def __init__(self, seed: int = 0):
        self._rng = random.Random(seed)

    def __call__(self, replicas: list, i: int) -> int:
        return self._rng.randrange(len(replicas))


class PrefixAwareRouter:
    """The live router's decision, by its own code: ``moe_runtime.routing.rank`` over the replicas taking
    requests, each seen as ``Replica(load = waiting + running, slots = max_batch, limit = max_batch + max_queue,
    dollars_per_work = its pool's $/work unit at full use)``, with the leading blocks each holds according to a
    ``routing.PrefixIndex`` per pool of that pool's cache size. The chosen replica's index records the request's
    blocks at routing, as the live router does (the replica's own cache fills at the end of the prefill; the
    two can differ, as in the live router). When every replica is at its limit the live router answers 429;
    the simulator drops nothing, so such a request goes to the least-loaded replica and ``full`` counts it."""

    name = "prefix-aware"

    def __init__(self, max_queue: int = DEFAULT_MAX_QUEUE, balance: float = routing.BALANCE):
        self.max_queue, self.balance = int(max_queue), balance
        self.full = 0   # requests every replica would have refused (HTTP 429 in the live router)
        self._index: dict[str, routing.PrefixIndex] = {}

    def bind(self, replay) -> None:
        w = replay.w
        self._w = routing.Weights(prompt=w.prompt, cached_prompt=w.cached_prompt, generated=w.generated)
        self._blocks, self._bt = replay.blocks, replay.block_tokens
        self._prompt, self._out = replay.prompt_tokens, replay.output_tokens
        self._dpw = {p.name: routing.dollars_per_work(p.price_per_hour, p.capacity) for p in replay.pools}
        self._ttft, self._tpot = replay.ttft_target, replay.tpot_target
        self._arr = replay._arr
        self._sent = routing.ArrivalWindow()
        self._whole = replay.prompt_tokens
        self._cap = dict(replay.cache_blocks)
        self._index = {name: routing.PrefixIndex(max(1, n)) for name, n in self._cap.items()}
        self._ledger = routing.InterferenceLedger()

    def __call__(self, replicas: list, i: int) -> int:
        blocks = self._blocks[i] if self._blocks is not None else ()
        view, pos, matched = [], {}, {}
        by_pool: dict[str, list[str]] = {}
        whole = self._whole
        now = float(self._arr[i])
        if blocks:
            for r in replicas:
                by_pool.setdefault(r.pool.name, []).append(r.rid)
            for name, ids in by_pool.items():
                matched.update(self._index[name].match(blocks, ids))
        prompt, bt = int(self._prompt[i]), self._bt
        slack = {}
        for k, r in enumerate(replicas):
            name, slots = r.pool.name, r.prof.max_batch
            # prompt tokens queued there for prefill, as the live router counts them (routed, no first token yet)
            pending = sum(whole[j] for j in r.waiting) + sum(whole[j] for j in r.prefill)
            prof = r.prof
            step = prof.step_base_s + prof.step_per_seq_s * min(r.nrun + 1, slots)   # its batch with this request
            # prompts sent there over one decode life of this request, this one's included (its prefill stretches
            # the others' steps), spread over at least the TTFT target: the live router's rule
            window = max(max(1.0, float(self._out[i])) * step, self._ttft or 0.0)
            rate = self._sent.rate(r.rid, now, window) + whole[i] / window
            tpot = routing.predicted_tpot(step, rate, prof.prefill_tps, prof.prefill_chunk_tokens) \
                if self._out[i] > 1 else 0.0
            # its prefill there, as the requests decoding there would feel it (routing.InterferenceLedger)
            prefill_s = (prompt - min(matched.get(r.rid, 0) * bt, max(0, prompt - 1))) / prof.prefill_tps
            # its slack at a full batch: the batch may fill while it decodes (routing.tpot_slack_s)
            full = prof.step_base_s + prof.step_per_seq_s * slots
            slack[r.rid] = (prefill_s, routing.tpot_slack_s(self._out[i], full, self._tpot))
            # the rate its queue prefills at while its decode batch runs beside (routing.prefill_rate)
            busy = prof.step_base_s + prof.step_per_seq_s * min(len(r.dec), slots) if r.dec else 0.0
            view.append(routing.Replica(r.rid, name, len(r.waiting) + r.nrun, slots, slots + self.max_queue,
                                        self._dpw[name],
                                        routing.prefill_rate(prof.prefill_tps, busy, prof.prefill_chunk_tokens),
                                        float(pending), tpot,
                                        self._ledger.breaks(r.rid, prefill_s)))
            pos[r.rid] = k
        ranked = routing.rank(view, matched, prompt_tokens=prompt, output_tokens=int(self._out[i]),
                              block_tokens=bt, weights=self._w, balance=self.balance,
                              ttft_target_s=self._ttft, tpot_target_s=self._tpot,
                              affinity_key=str(blocks[0]).encode() if blocks else b"")
        if ranked:
            k = pos[ranked[0].id]
        else:
            self.full += 1
            k = least_loaded(replicas, i)
        chosen = replicas[k]
        self._sent.add(chosen.rid, float(self._arr[i]), whole[i])
        self._ledger.add(chosen.rid, i, *slack[chosen.rid])
        if blocks and self._cap[chosen.pool.name] > 0:
            self._index[chosen.pool.name].record(chosen.rid, blocks)
        return k

    def finished(self, i: int) -> None:
        """Request ``i`` made its last token (the live router sees its stream end)."""
        self._ledger.finish(i)

    def forget(self, replica) -> None:
        self._ledger.forget(replica.rid)
        index = self._index.get(replica.pool.name)
        if index is not None:
            index.forget(replica.rid)


def make_router(name: str, *, max_queue: int = DEFAULT_MAX_QUEUE, seed: int = 0) -> Router:
    """A fresh router by its CLI name (``ROUTERS``); routers keep state, so one per replay."""
    if name == "least-loaded":
        return least_loaded
    if name == "prefix-aware":
        return PrefixAwareRouter(max_queue=max_queue)
    if name == "random":
        return RandomRouter(seed)
    raise ValueError(f"unknown router {name!r}; use one of {', '.join(ROUTERS)}")


def default_cache_blocks(profiles: Mapping[str, ServingProfile], block_tokens: int) -> dict[str, int]:
    """Prefix-cache blocks per replica when nothing better is known: the profile's KV tokens / the block size (a
    vLLM-like engine caches prefixes in its KV blocks)."""
    return {name: max(1, prof.kv_tokens // max(1, block_tokens)) for name, prof in profiles.items()}


class ReplicaFleet:
    """Replicas per pool: asked (paid, starting or ready), ready (taking requests), draining (paid, finishing)."""

    def __init__(self, pools: Sequence[PoolModel], profiles: dict[str, ServingProfile], cold_start: bool = True):
        self.pools = list(pools)
        self.profiles = profiles
        self.cold_start = cold_start
        self.asked: dict[str, int] = {p.name: 0 for p in self.pools}
        self.starting: dict[str, list[_Replica]] = {p.name: [] for p in self.pools}
        self.active: list[_Replica] = []       # ready and taking requests, in the order they became ready
        self.draining: list[_Replica] = []
        self._ready = {p.name: 0 for p in self.pools}
        self._serial = 0

    def ready(self, p) -> int:
        return self._ready.get(p.name if isinstance(p, PoolModel) else p, 0)

    def capacity(self) -> float:
        return sum(self._ready[p.name] * p.capacity for p in self.pools)

    def cost_rate(self) -> float:
        """$/hour of the replicas asked for (starting and ready) and of those still draining."""
        return (sum(self.asked[p.name] * p.price_per_hour for p in self.pools)
                + sum(r.pool.price_per_hour for r in self.draining))

    def tick(self, now: float) -> None:
        for p in self.pools:
            cold = self.starting[p.name]
            if cold and min(r.ready_at for r in cold) <= now:
                keep = []
                for r in cold:
                    if r.ready_at <= now:
                        self.active.append(r)
                        self._ready[p.name] += 1
                    else:
                        keep.append(r)
                self.starting[p.name] = keep

    def set_replicas(self, want: dict[str, int], now: float) -> list[int]:
        """Start or remove replicas; returns the queued requests of removed replicas (to re-route)."""
        orphans: list[int] = []
        for pi, p in enumerate(self.pools):
            have = self.asked[p.name]
            n = int(want.get(p.name, 0))
            cold = self.starting[p.name]
            if n > have:
                ready_at = now + (p.cold_start_s if self.cold_start else 0.0)
                for _ in range(n - have):
                    self._serial += 1
                    cold.append(_Replica(p, pi, self.profiles[p.name], self._serial, ready_at))
            elif n < have:
                drop = have - n
                cold.sort(key=lambda r: (r.ready_at, r.serial))
                while drop and cold:          # cancel the latest-starting replicas first
                    cold.pop()
                    drop -= 1
                if drop:
                    mine = [r for r in self.active if r.pi == pi]
                    mine.sort(key=lambda r: (len(r.waiting) + r.nrun, -r.serial))
                    gone = set(id(r) for r in mine[:drop])
                    self.active = [r for r in self.active if id(r) not in gone]
                    for r in mine[:drop]:
                        self._ready[p.name] -= 1
                        orphans.extend(r.waiting)
                        r.waiting.clear()
                        if r.nrun:
                            self.draining.append(r)
            self.asked[p.name] = n
        return orphans


class ReplicaReplay(ReplayResults):
    """One policy's run over a trace through the per-replica model: ``step`` every second, ``observation`` every
    interval (the interface of ``fleet.Replay``). ``profiles``: a ServingProfile per pool (default
    ``profiles_for(pools, 16, weights=weights)``: 16 is serving.maxBatchSize's default); ``router``: see
    ``Router`` (a fresh one per replay: routers keep state); ``served_by_pool``: report tokens per pool in
    observations, as the runtime's metrics do; ``cache_blocks``: prefix-cache blocks per replica (one number or
    {pool: blocks}; default ``default_cache_blocks``), used only when the trace records blocks and
    ``per_replica_cache`` (False: the trace's fleet-wide cached tokens, as before issue 12)."""

    def __init__(self, trace, pools, weights: WorkWeights, ttft_target: float, tpot_target: float,
                 cold_start: bool = True, seed: int = 0, *, profiles: dict[str, ServingProfile] | None = None,
                 router: Router = least_loaded, served_by_pool: bool = True,
                 cache_blocks: int | Mapping[str, int] | None = None, per_replica_cache: bool = True):
        self.trace, self.pools, self.w = trace, list(pools), weights
        self.profiles = profiles or profiles_for(self.pools, 16, weights=weights)
        missing = [p.name for p in self.pools if p.name not in self.profiles]
        if missing:
            raise ValueError(f"no ServingProfile for pool(s) {missing}")
        self.fleet = ReplicaFleet(self.pools, self.profiles, cold_start=cold_start)
        self.ttft_target, self.tpot_target = ttft_target, tpot_target
        self.router = router
        self.report_by_pool = served_by_pool
        self.work = (weights.prompt * trace.prompt + weights.cached_prompt * trace.cached
                     + weights.generated * trace.output)
        n = len(trace)
        self.n = n
        self.ttft = np.full(n, np.inf)
        self.tpot = np.full(n, np.inf)
        self.rng = np.random.default_rng(seed)   # unused: the model is deterministic; kept for the interface
        # Python lists: per-request scalars are read in the inner loop.
        self._arr = trace.arrival_s.tolist()
        self._prompt = trace.prompt.tolist()
        self._cached = trace.cached.tolist()
        self._out = trace.output.tolist()
        self._work = self.work.tolist()
        self._kv = (trace.prompt + trace.cached + trace.output).tolist()
        self.prompt_tokens = (trace.prompt + trace.cached).tolist()   # whole prompts (computed + cached)
        self.output_tokens = self._out
        self.blocks = getattr(trace, "blocks", None) if per_replica_cache else None
        self.block_tokens = int(getattr(trace, "block_tokens", 512))
        defaults = default_cache_blocks({p.name: self.profiles[p.name] for p in self.pools}, self.block_tokens)
        if isinstance(cache_blocks, Mapping):
            defaults.update({k: int(v) for k, v in cache_blocks.items() if k in defaults})
        elif cache_blocks is not None:
            defaults = {k: int(cache_blocks) for k in defaults}
        if any(v < 0 for v in defaults.values()):
            raise ValueError("cache_blocks must be >= 0")
        self.cache_blocks = defaults
        self._cache_cap = [defaults[p.name] for p in self.pools]
        # cached_served: per request, prompt tokens served from a prefix cache (the trace's, or its replica's)
        if self.blocks is None:   # the trace's fleet-wide cached tokens, prefill time known per pool up front
            self._pf = [[self.profiles[p.name].prefill_s(c, k) for c, k in zip(self._prompt, self._cached)]
                        for p in self.pools]
            self._p_srv, self.cached_served = self._prompt, self._cached
        else:                     # per-replica caches: known at admission (_admit_cached)
            self._pf = None
            self._pfs = [0.0] * n
            self._p_srv, self.cached_served = [0.0] * n, [0.0] * n
        self.tokens_by_pool = {p.name: [0.0, 0.0, 0.0] for p in self.pools}   # prompt, cached, generated served
        bind = getattr(router, "bind", None)
        if bind is not None:
            bind(self)
        self._on_finish = getattr(router, "finished", None)   # routers that track requests in flight
        self._first = [0.0] * n
        self.pending: deque = deque()   # arrived, no replica to route to
        self.next_arrival = 0
        self.finished = 0
        self.cost = 0.0
        self.actions = 0
        self.last_asked: dict[str, int] | None = None
        self.series: list[tuple] = []   # (t, arrived w/s, ready capacity w/s, {pool: asked}, cost $/h, served w/s)
        self._served = 0.0
        self._reset_window()

    def _reset_window(self) -> None:
        self._tok = [[0.0, 0.0, 0.0] for _ in self.pools]   # per pool: prompt, cached, generated tokens served
        self._started = 0
        self._win_ttft: list[float] = []
        self._win_tpot: list[float] = []
        self._win_wait: list[float] = []   # arrival -> its own prefill began (what a queue-time histogram holds)

    # ---- control -----------------------------------------------------------------------------------------
    def apply(self, replicas: dict[str, int], now: float) -> None:
        clean = {p.name: int(replicas.get(p.name, 0)) for p in self.pools}
        if self.last_asked is not None and clean != self.last_asked:
            self.actions += 1
        self.last_asked = clean
        before = list(self.fleet.active)
        orphans = self.fleet.set_replicas(clean, now)
        if len(self.fleet.active) < len(before):   # removed replicas lose their caches, in the router's view too
            still = set(map(id, self.fleet.active))
            forget = getattr(self.router, "forget", None)
            for r in before:
                if id(r) not in still:
                    r.cache.clear()
                    if forget is not None:
                        forget(r)
        if orphans:
            self._route(sorted(orphans))

    def _route(self, requests) -> None:
        """Route requests (in arrival order) to the ready replicas; with none ready they wait in the fleet queue."""
        active = self.fleet.active
        if not active:
            self.pending.extend(requests)
            self.pending = deque(sorted(self.pending))
            return
        touched = set()
        for i in requests:
            r = active[self.router(active, i)]
            if r.waiting and r.waiting[-1] > i:
                touched.add(id(r))
            r.waiting.append(i)
        for r in active:    # re-routed requests keep FIFO order by arrival
            if id(r) in touched:
                r.waiting = deque(sorted(r.waiting))

    def observation(self, now: float, interval: float) -> Observation:
        """What the runtime's metrics would say over the last ``interval`` seconds (TTFT observed at the first
        token, TPOT at the finish, tokens as they are served: prompt at the end of its prefill)."""
        tok = np.array(self._tok).sum(axis=0) / interval
        by_pool = None
        if self.report_by_pool:
            by_pool = {p.name: {"prompt": t[0] / interval, "cached_prompt": t[1] / interval,
                                "generated": t[2] / interval} for p, t in zip(self.pools, self._tok)}
        fl = self.fleet
        obs = Observation(
            observed_at=now,
            tokens_per_s={"prompt": float(tok[0]), "cached_prompt": float(tok[1]), "generated": float(tok[2])},
            requests_per_s=self._started / interval,
            queue_depth=float(self.queued()),
            running=float(sum(r.nrun for r in fl.active) + sum(r.nrun for r in fl.draining)),
            ttft_p95_s=float(np.percentile(self._win_ttft, 95)) if self._win_ttft else None,
            tpot_p95_s=float(np.percentile(self._win_tpot, 95)) if self._win_tpot else None,
            queue_wait_p95_s=float(np.percentile(self._win_wait, 95)) if self._win_wait else None,
            ready={p.name: fl.ready(p) for p in self.pools},
            served_by_pool=by_pool,
        )
        self._reset_window()
        return obs

    def queued(self) -> int:
        """Requests arrived and not admitted (the fleet's queue and every replica's)."""
        return len(self.pending) + sum(len(r.waiting) for r in self.fleet.active)

    def ongoing(self) -> int:
        """Requests queued or running (what Ray Serve's autoscaler counts)."""
        fl = self.fleet
        return self.queued() + sum(r.nrun for r in fl.active) + sum(r.nrun for r in fl.draining)

    # ---- one second --------------------------------------------------------------------------------------
    def step(self, now: float, dt: float = 1.0) -> None:
        end = now + dt
        fl = self.fleet
        fl.tick(now)
        arr, n = self._arr, self.n
        arrived = 0.0
        first_new = self.next_arrival
        while self.next_arrival < n and arr[self.next_arrival] < end:
            arrived += self._work[self.next_arrival]
            self.next_arrival += 1
        new = range(first_new, self.next_arrival)
        if fl.active:
            if self.pending:
                old = list(self.pending)
                self.pending.clear()
                self._route(old)
            if new:
                self._route(new)
        else:
            self.pending.extend(new)
        self._served = 0.0
        for r in fl.active:
            if r.nrun or r.waiting:
                self._advance(r, now, end)
        drain_cost = 0.0
        if fl.draining:
            keep = []
            for r in fl.draining:
                self._advance(r, now, end)
                if r.nrun:
                    keep.append(r)
                    drain_cost += r.pool.price_per_hour * dt
                else:            # gone at its last finish
                    drain_cost += r.pool.price_per_hour * max(0.0, r.last_event - now)
            fl.draining = keep
        rate = sum(fl.asked[p.name] * p.price_per_hour for p in self.pools)
        self.cost += (rate * dt + drain_cost) / 3600.0
        self.series.append((now, arrived / dt, fl.capacity(), dict(fl.asked), rate + drain_cost / dt,
                            self._served / dt))

    def _advance(self, r: _Replica, t: float, t_end: float) -> None:
        """Run replica ``r`` from ``t`` to ``t_end``: closed-form segments between admissions, prefill ends and
        finishes."""
        prof = r.prof
        base, per, max_b, kv_cap = prof.step_base_s, prof.step_per_seq_s, prof.max_batch, prof.kv_tokens
        chunk_t = prof.prefill_chunk_tokens / prof.prefill_tps
        over = prof.ttft_overhead_s
        arr, kvn, out, first = self._arr, self._kv, self._out, self._first
        blocks = self.blocks
        pf_s = self._pf[r.pi] if blocks is None else self._pfs
        p_srv, c_srv = self._p_srv, self.cached_served
        ttft, tpot = self.ttft, self.tpot
        waiting, prefill, dec = r.waiting, r.prefill, r.dec
        clock, kv, nrun, pf_rem = r.clock, r.kv, r.nrun, r.pf_rem
        gen = p_tok = c_tok = 0.0
        started = finished = 0
        win_ttft, win_tpot, win_wait = self._win_ttft, self._win_tpot, self._win_wait
        on_finish = self._on_finish
        last = r.last_event
        while True:
            while waiting and nrun < max_b:            # admit (FIFO, no overtaking)
                i = waiting[0]
                if arr[i] > t or (nrun and kv + kvn[i] > kv_cap):
                    break
                waiting.popleft()
                kv += kvn[i]
                nrun += 1
                started += 1
                if blocks is not None:
                    self._admit_cached(r, i)
                if not prefill:
                    pf_rem = pf_s[i]
                    win_wait.append(t - arr[i])
                prefill.append(i)
            bd = len(dec)
            t_next, kind = t_end, 0
            if bd:
                st = base + per * bd
                if prefill:
                    f = chunk_t / (st + chunk_t)
                    rate = (1.0 - f) / st
                else:
                    f, rate = 0.0, 1.0 / st
                td = t + max(0.0, dec[0][0] - clock) / rate
                if td < t_next:
                    t_next, kind = td, 2
            else:
                f, rate = (1.0 if prefill else 0.0), 0.0
            if prefill:
                tp = t + max(0.0, pf_rem) / f
                if tp <= t_next:
                    t_next, kind = tp, 1
            if waiting and nrun < max_b:
                i = waiting[0]
                ta = arr[i]
                if t < ta < t_next and (not nrun or kv + kvn[i] <= kv_cap):
                    t_next, kind = ta, 3
            d = t_next - t
            if d > 0:
                if bd:
                    clock += rate * d
                    gen += rate * d * bd
                if prefill:
                    pf_rem -= f * d
            t = t_next
            if kind == 0:
                break
            if kind == 1:                               # prefill done: first token
                i = prefill.popleft()
                v = t - arr[i]
                ttft[i] = v + over       # the client's TTFT; the runtime's own metric (what the policy
                win_ttft.append(v)       # reads) starts at the handler, after the path outside the engine
                p_tok += p_srv[i]
                c_tok += c_srv[i]
                if blocks is not None:
                    self._cache_insert(r, i)
                o = out[i]
                if o >= 1:
                    gen += 1.0
                if o <= 1:
                    tpot[i] = 0.0
                    kv -= kvn[i]
                    nrun -= 1
                    finished += 1
                    last = t
                else:
                    first[i] = t
                    heapq.heappush(dec, (clock + o - 1.0, i))
                if prefill:
                    pf_rem = pf_s[prefill[0]]
                    win_wait.append(t - arr[prefill[0]])
                else:
                    pf_rem = 0.0
            elif kind == 2:                             # decode finishes
                clock = dec[0][0]
                while dec and dec[0][0] <= clock + 1e-9:
                    i = heapq.heappop(dec)[1]
                    tpot[i] = v = (t - first[i]) / (out[i] - 1.0)
                    win_tpot.append(v)
                    if on_finish is not None:
                        on_finish(i)
                    kv -= kvn[i]
                    nrun -= 1
                    finished += 1
                last = t
        r.clock, r.kv, r.nrun, r.pf_rem, r.last_event = clock, (kv if nrun else 0.0), nrun, pf_rem, last
        tok = self._tok[r.pi]
        tok[0] += p_tok
        tok[1] += c_tok
        tok[2] += gen
        tok = self.tokens_by_pool[r.pool.name]
        tok[0] += p_tok
        tok[1] += c_tok
        tok[2] += gen
        w = self.w
        self._served += w.prompt * p_tok + w.cached_prompt * c_tok + w.generated * gen
        self._started += started
        self.finished += finished

    def _admit_cached(self, r: _Replica, i: int) -> None:
        """Request ``i`` is admitted on ``r``: its cached tokens are the leading blocks ``r`` holds now (touched, so
        that they stay while it runs), and its prefill time follows."""
        cache, bl = r.cache, self.blocks[i]
        k = 0
        for b in bl:
            if b not in cache:
                break
            k += 1
        for b in reversed(bl[:k]):
            cache.move_to_end(b)
        whole = self.prompt_tokens[i]
        hit = min(whole, float(k * self.block_tokens))
        self.cached_served[i], self._p_srv[i] = hit, whole - hit
        self._pfs[i] = r.prof.prefill_s(whole - hit, hit)

    def _cache_insert(self, r: _Replica, i: int) -> None:
        """Request ``i``'s prefill on ``r`` is done: its blocks are cached, the head most recent (evicted last)."""
        cap = self._cache_cap[r.pi]
        if cap <= 0:
            return
        cache = r.cache
        for b in reversed(self.blocks[i]):
            cache[b] = None
            cache.move_to_end(b)
        while len(cache) > cap:
            cache.popitem(last=False)

    def cache_hit_ratio(self) -> float | None:
        """Cached prompt tokens / all prompt tokens, over the prompts prefilled so far (None: none yet)."""
        p = sum(t[0] for t in self.tokens_by_pool.values())
        c = sum(t[1] for t in self.tokens_by_pool.values())
        return c / (p + c) if p + c > 0 else None

    def served_tokens(self) -> float:
        """Prompt (computed + cached) and generated tokens served so far."""
        return float(sum(sum(t) for t in self.tokens_by_pool.values()))

    @property
    def done(self) -> bool:
        return self.finished >= self.n

