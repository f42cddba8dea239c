"""Which replica serves a request, across every pool of a deployment (docs/routing.md).

Pure and torch-free: the ingress (``serve_app.RemoteEngine``) and ``moectl simulate`` run this same code, so what
the simulator predicts about routing is what the router does.

One rule ranks the replicas for a request: the dollars this request would cost on each replica,
``$/work unit of its pool x work``, where the work counts the prompt tokens the replica already holds at the
cached rate. So prefix affinity and pool cost are one trade, priced: a hit on a dear pool wins over a miss on a
cheap one only when the saved prefill is worth more than the price gap. Guards keep that from hurting latency
or one replica:
  * headroom: a replica is preferred only while it runs fewer requests than its batch slots (it admits at once)
    and, where the SLO is known, while its predicted TTFT and TPOT meet it: the prefill queued there (prompt
    tokens routed and not yet prefilled) plus this request's own, at the pool's prefill rate; the decode step
    with this request in its batch (the caller's step model); and while this prompt's prefill would push no
    request decoding there past its TPOT target (``InterferenceLedger``: the tail a mean rate cannot see).
    Cost decides only among replicas that would meet the SLO; the fleet is paid for either way, and the
    autoscaler turns an idle dear pool into savings;
  * bounded load (consistent hashing with bounded loads, Mirrokni, Thorup and Zadimoghaddam 2018): a replica's
    held prefix counts only while its load is under ``balance`` x its pool's mean plus one, so one hot prefix
    cannot swamp one replica, and a replica serving one conversation keeps it at light load;
  * spread: among equals (a new prompt on idle replicas), rendezvous hashing of the prompt's first block picks
    the replica, so new conversations spread over the pool's caches and each lands where its prefix would;
  * fall over: replicas without headroom come after all those with it: those that keep the TTFT target first,
    then those with a free batch slot, then those that break the fewest requests in flight, then the soonest
    predicted first token; a replica at its limit (slots + queue) is never ranked, so an empty ranking means
    every pool is full (429).
"""
from __future__ import annotations

import bisect
import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

FIXED_STEP_SHARE = 0.6  # share of a full decode step that the batch does not change (simulate/serving.py's default)
MAX_INDEX_BLOCKS = 1 << 18  # the most blocks the router's index keeps per replica (~30 MB), whatever its cache
BALANCE = 1.25  # the bounded-load factor c of Mirrokni et al.: a replica takes affinity traffic up to c x mean load
_ROOT = b"moe-prefix"


@dataclass(frozen=True)
class Weights:
    """Work units per token kind (generated = 1): the autoscaler's WorkWeights, restated torch- and
    operator-free."""

    prompt: float = 0.2
    cached_prompt: float = 0.01
    generated: float = 1.0


@dataclass(frozen=True)
class Replica:
    """What the router knows of one replica when it routes.

    ``load``: requests it runs or queues (as far as this router knows); ``slots``: requests it runs at once
    (maxBatchSize); ``limit``: requests it accepts at all (slots + maxQueue); ``dollars_per_work``: its pool's
    $ per work unit at full use (price per hour / 3600 / capacity in work units per second); ``prefill_tps`` and
    ``pending_prefill``: what predicts its next first token."""

    id: str
    pool: str
    load: int
    slots: int
    limit: int
    dollars_per_work: float
    prefill_tps: float = math.inf      # its prefill rate now, prompt tokens/s (prefill_rate; inf: unknown)
    pending_prefill: float = 0.0       # prompt tokens routed to it and not prefilled yet
    tpot_s: float = 0.0                # this request's predicted time per output token there (predicted_tpot)
    breaks: int = 0                    # requests in flight there whose TPOT this prompt's prefill would break


def block_hashes(token_ids: Sequence[int], block_tokens: int) -> list[bytes]:
    """Chained hashes of the prompt's full blocks: block k's hash covers tokens [0, (k+1) x block_tokens), so two
    prompts share hash k exactly when they share that whole prefix (as vLLM's and our prefix caches key blocks)."""
    if block_tokens < 1:
        raise ValueError("block_tokens must be >= 1")
    out: list[bytes] = []
    parent = _ROOT
    n = len(token_ids) // block_tokens
    for k in range(n):
        chunk = token_ids[k * block_tokens:(k + 1) * block_tokens]
        h = hashlib.blake2b(parent, digest_size=16)
        h.update(b",".join(str(int(t)).encode() for t in chunk))
        parent = h.digest()
        out.append(parent)
    return out


class PrefixIndex:
    """Which replica holds which prompt blocks, as far as this router placed them (an approximate index, as
    Dynamo's approximate KV router keeps): per replica an LRU of at most ``blocks_per_replica`` block hashes, the
    size of its cache, so the index forgets what the replica's own LRU evicts."""

    def __init__(self, blocks_per_replica: int):
        if blocks_per_replica < 1:
            raise ValueError("blocks_per_replica must be >= 1")
        self.capacity = min(int(blocks_per_replica), MAX_INDEX_BLOCKS)
        self._held: dict[str, OrderedDict] = {}

    def match(self, hashes: Sequence, replicas: Iterable[str]) -> dict[str, int]:
        """Per replica, how many leading blocks of ``hashes`` it holds (its longest cached prefix)."""
        out = {}
        for rid in replicas:
            held = self._held.get(rid)
            k = 0
            if held:
                while k < len(hashes) and hashes[k] in held:
                    k += 1
            out[rid] = k
        return out

    def record(self, replica: str, hashes: Sequence) -> None:
        """``replica`` now holds every block of ``hashes`` (it prefilled or reused them), most recent last."""
        held = self._held.setdefault(replica, OrderedDict())
        for h in reversed(hashes):  # the prompt's head most recent: evicted last, as vLLM keeps shared prefixes
            held[h] = None
            held.move_to_end(h)
        while len(held) > self.capacity:
            held.popitem(last=False)

    def forget(self, replica: str) -> None:
        """The replica is gone (scaled down, restarted): its cache went with it."""
        self._held.pop(replica, None)

    def replicas(self) -> list[str]:
        return list(self._held)


def request_work(prompt_tokens: int, cached_tokens: int, output_tokens: int, w: Weights) -> float:
    """Work units of one request when ``cached_tokens`` of its prompt are already held."""
    cached = max(0, min(int(cached_tokens), int(prompt_tokens) - 1)) if prompt_tokens > 0 else 0
    return w.prompt * (prompt_tokens - cached) + w.cached_prompt * cached + w.generated * max(0, output_tokens)


def rank(replicas: Sequence[Replica], matched: Mapping[str, int], *, prompt_tokens: int, output_tokens: int,
         block_tokens: int, weights: Weights = Weights(), balance: float = BALANCE,
         ttft_target_s: float | None = None, tpot_target_s: float | None = None,
         affinity_key: bytes = b"") -> list[Replica]:
    """The replicas to try for one request, best first (module docstring). ``matched``: leading blocks each
    replica holds (``PrefixIndex.match``); a replica absent from it holds none. ``ttft_target_s`` and
    ``tpot_target_s``: the SLO (None: that side does not bound headroom). ``affinity_key``: the prompt's
    first block hash (rendezvous tie-break). Replicas at their limit are left out: an empty list means every
    replica is full."""
    open_ = [r for r in replicas if r.load < r.limit]
    pool_load: dict[str, list[int]] = {}
    for r in open_:
        pool_load.setdefault(r.pool, []).append(r.load)
    bound = {p: balance * (sum(ls) + 1) / len(ls) + 1 for p, ls in pool_load.items()}

    def key(r: Replica):
        hits = matched.get(r.id, 0) if r.load < bound[r.pool] else 0
        cached = min(hits * block_tokens, max(0, prompt_tokens - 1))
        work = request_work(prompt_tokens, cached, output_tokens, weights)
        dollars = r.dollars_per_work * work if work > 0 else 0.0
        ttft = (r.pending_prefill + prompt_tokens - cached) / r.prefill_tps if r.prefill_tps > 0 else math.inf
        spread = hashlib.blake2b(affinity_key + r.id.encode(), digest_size=8).digest()
        late = ttft_target_s is not None and ttft > ttft_target_s
        full = r.load >= r.slots
        if not full and not late and not r.breaks \
                and (tpot_target_s is None or r.tpot_s <= tpot_target_s):
            return (0, dollars, work, r.load / max(1, r.slots), spread)   # work: a free pool still uses its cache
        # a full batch: the request waits for a slot, which the TTFT prediction does not see; worse than a break
        return (1, late, full, r.breaks, ttft, (r.load - r.slots + 1) / max(1, r.slots), dollars, spread)

    return sorted(open_, key=key)


def tpot_slack_s(output_tokens: float, step_s: float, tpot_target_s: float | None) -> float | None:
    """Seconds of other prompts' prefill a request can have interleaved with its decode and still meet the TPOT
    target: ``(output_tokens - 1) x (target - step_s)``. A prefill of ``e`` seconds run beside a decoding
    sequence stretches its life by ``e`` (chunked: each step carries ``c`` seconds of prompt and still makes one
    token; whole-prompt: the decode stops for ``e``), so its TPOT holds while the prefill beside it stays under
    this. None: nothing to protect (one token has no TPOT; no target; or the step alone misses the target: the
    request is lost whatever lands beside it, and counting it would keep every prompt off its replica).

    Callers pass the step of a full batch: the batch may fill while the request decodes (the router itself
    admits up to the slots), and with the step of the batch it joined, short answers on a filling replica
    missed by the few ms per token the batch added."""
    if tpot_target_s is None or output_tokens <= 1 or not tpot_target_s > step_s:
        return None
    return (output_tokens - 1.0) * (tpot_target_s - step_s)


class InterferenceLedger:
    """The TPOT slack of the requests in flight on each replica (``tpot_slack_s``), to count the requests a new
    prompt's prefill would push past the TPOT target there (``Replica.breaks``).

    An engine prefills in arrival order, so a request's decode is stretched by the prefill routed to its
    replica after it, while it runs, and by nothing ahead of it. Per replica the ledger keeps the prefill seconds
    routed there so far (``T``); a request sent when ``T`` became ``t0`` with slack ``s`` meets its TPOT while
    ``T <= t0 + s``, so a new prefill of ``e`` seconds breaks the requests whose threshold lies in ``[T, T + e)``
    (those already past it are lost either way). A mean arrival rate cannot see this: a short answer lives for
    a fraction of a second, and one long prompt landing beside it decides its TPOT."""

    def __init__(self):
        self._routed: dict[str, float] = {}                   # replica -> prefill seconds routed there so far
        self._thresholds: dict[str, list[float]] = {}        # replica -> sorted thresholds of its requests
        self._of: dict[object, tuple[str, float]] = {}       # request -> (replica, threshold)

    def breaks(self, replica: str, prefill_s: float) -> int:
        """Requests in flight on ``replica`` whose TPOT a prefill of ``prefill_s`` seconds there would break."""
        th = self._thresholds.get(replica)
        if not th or prefill_s <= 0:
            return 0
        t = self._routed.get(replica, 0.0)
        return bisect.bisect_left(th, t + prefill_s) - bisect.bisect_left(th, t)

    def add(self, replica: str, request: object, prefill_s: float, slack_s: float | None) -> None:
        """``request`` was sent to ``replica`` with a prefill of ``prefill_s`` seconds there: it stretches the
        requests in flight, then it is in flight itself with ``slack_s`` (None: nothing to protect)."""
        self.finish(request)
        t = self._routed.get(replica, 0.0) + max(0.0, prefill_s)
        self._routed[replica] = t
        if slack_s is not None:
            bisect.insort(self._thresholds.setdefault(replica, []), t + slack_s)
            self._of[request] = (replica, t + slack_s)

    def finish(self, request: object) -> None:
        """``request`` finished, failed or was refused: no prefill can stretch it any more."""
        entry = self._of.pop(request, None)
        if entry is None:
            return
        th = self._thresholds.get(entry[0])
        if th:
            i = bisect.bisect_left(th, entry[1])
            if i < len(th) and th[i] == entry[1]:
                del th[i]

    def forget(self, replica: str) -> None:
        """The replica is gone: its requests went with it."""
        self._routed.pop(replica, None)
        self._thresholds.pop(replica, None)
        for k in [k for k, (rid, _) in self._of.items() if rid == replica]:
            del self._of[k]

    def replicas(self) -> list[str]:
        return list(self._routed)

    def __len__(self) -> int:
        return len(self._of)


def prefill_rate(prefill_tps: float, step_s: float, chunk_tokens: float) -> float:
    """Prompt tokens/s a replica prefills while its decode batch, of step ``step_s``, runs beside: with chunked
    prefill (vLLM) each step carries ``chunk_tokens`` of prompt, so prefill gets ``c / (step + c)`` of the engine
    (``c`` = the chunk's prefill time); with whole-prompt prefill (``chunk_tokens`` 0: the torch engine) or no
    batch, decode waits and prefill runs at the full rate. The TTFT prediction divides the queued prompt by this:
    the full rate alone predicted first tokens ~20% early on a busy replica and let the cheap pool fill past its
    TTFT target."""
    if chunk_tokens <= 0 or step_s <= 0 or prefill_tps <= 0 or not math.isfinite(prefill_tps):
        return prefill_tps
    chunk_s = chunk_tokens / prefill_tps
    return prefill_tps * chunk_s / (step_s + chunk_s)


def predicted_tpot(step_s: float, prefill_tokens_per_s: float, prefill_tps: float, chunk_tokens: float) -> float:
    """Seconds per output token on a replica whose decode step is ``step_s`` (its batch with the request in it),
    while prompts arrive there at ``prefill_tokens_per_s`` (uncached tokens) and it prefills ``prefill_tps``.

    A continuous-batching engine carries a chunk of ``chunk_tokens`` of prefill in every step while any prefill
    is pending (vLLM's chunked prefill): such a step lasts ``step_s + chunk_s``, and prefill then gets
    ``chunk_s / (step_s + chunk_s)`` of the engine. Keeping up with the arrivals needs prefill pending for a share
    ``p = (prefill_tokens_per_s / prefill_tps) x (step_s + chunk_s) / chunk_s`` of the time (at most all), so a
    sequence makes ``p / (step_s + chunk_s) + (1 - p) / step_s`` tokens per second, and its TPOT is the inverse.
    Where the arrivals outrun the engine TPOT is the full chunked step (and TTFT grows without bound, which the
    TTFT side sees).

    ``chunk_tokens`` 0: the engine prefills whole prompts between decode steps (the torch engine), so decode gets
    the ``1 - prefill_tokens_per_s / prefill_tps`` of the time prefill leaves it."""
    if prefill_tps <= 0 or not math.isfinite(prefill_tps):
        return step_s
    if chunk_tokens <= 0:
        left = 1.0 - prefill_tokens_per_s / prefill_tps
        return step_s / left if left > 0 else math.inf
    chunk_s = chunk_tokens / prefill_tps
    share = min(1.0, prefill_tokens_per_s / prefill_tps * (step_s + chunk_s) / chunk_s)
    if step_s <= 0:
        return share * chunk_s
    return 1.0 / (share / (step_s + chunk_s) + (1.0 - share) / step_s)   # time per token = 1 / tokens per s


class ArrivalWindow:
    """Prompt tokens sent to each replica, with their times, to rate them over a recent window (what
    ``predicted_tpot`` takes as the prefill arrival rate). Cumulative sums and a binary search: a query costs
    O(log n) whatever the window a client's ``max_tokens`` asks for; windows are capped at ``keep_s``, and
    entries older than it are dropped."""

    def __init__(self, keep_s: float = 600.0):
        self.keep_s = keep_s
        self._sent: dict[str, tuple[list[float], list[float], list[int]]] = {}   # times, cumulative, [start]

    def add(self, replica: str, t: float, tokens: float) -> None:
        times, cums, start = self._sent.setdefault(replica, ([], [], [0]))
        times.append(t)
        cums.append((cums[-1] if cums else 0.0) + float(tokens))
        lo = bisect.bisect_left(times, t - self.keep_s, start[0])
        start[0] = lo
        if lo > 1024 and lo > len(times) // 2:   # compact: the live entries move to the front
            del times[:lo], cums[:lo]
            start[0] = 0

    def rate(self, replica: str, now: float, window_s: float) -> float:
        """Tokens per second sent to ``replica`` over the last ``window_s`` seconds (at most ``keep_s``)."""
        entry = self._sent.get(replica)
        window_s = min(window_s, self.keep_s)
        if entry is None or window_s <= 0 or len(entry[0]) <= entry[2][0]:
            return 0.0
        times, cums, start = entry
        i = bisect.bisect_left(times, now - window_s, start[0])
        before = cums[i - 1] if i > 0 else 0.0
        return (cums[-1] - before) / window_s

    def forget(self, replica: str) -> None:
        self._sent.pop(replica, None)

    def replicas(self) -> list[str]:
        return list(self._sent)


def decode_step_s(batch: int, slots: int, decode_tps: float, fixed_share: float = FIXED_STEP_SHARE) -> float:
    """One decode step of ``batch`` sequences when a full batch of ``slots`` makes ``decode_tps`` tokens/s and
    ``fixed_share`` of a step does not depend on the batch (weights streamed once per step): the step model of
    ``moectl simulate``'s replica profile (simulate/serving.py)."""
    if decode_tps <= 0 or not math.isfinite(decode_tps):
        return 0.0
    full = slots / decode_tps
    return full * (fixed_share + (1.0 - fixed_share) * min(batch, slots) / max(1, slots))


def dollars_per_work(price_per_hour: float, capacity_work_per_s: float) -> float:
    """A pool's $ per work unit at full use; a pool of unknown capacity is priced as dear as possible."""
    if capacity_work_per_s <= 0 or not math.isfinite(capacity_work_per_s):
        return math.inf
    return max(0.0, price_per_hour) / 3600.0 / capacity_work_per_s
