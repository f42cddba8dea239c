"""Which replica serves a request, across every pool of a deployment (docs/routing.md).

Pure and torch-free: the ingress (``serve_app.RemoteEngine``) and ``moectl simulate`` run this same code, so what
the simulator predicts about routing is what the router does.

One rule ranks the replicas for a request: the dollars this request would cost on each replica,
``$/work unit of its pool x work``, where the work counts the prompt tokens the replica already holds at the
cached rate. So prefix affinity and pool cost are one trade, priced: a hit on a dear pool wins over a miss on a
cheap one only when the saved prefill is worth more than the price gap. Guards keep that from hurting latency
or one replica:
  * headroom: a replica is preferred only while it runs fewer requests than its batch slots (it admits at once)
    and, where the TTFT target is known, while its predicted TTFT meets it: the prefill queued there (prompt
    tokens routed and not yet prefilled) plus this request's own, at the pool's prefill rate. Cost decides only
    among replicas that would meet the SLO; the fleet is paid for either way, and the autoscaler turns an idle
    dear pool into savings;
  * bounded load (consistent hashing with bounded loads, Mirrokni, Thorup and Zadimoghaddam 2018): a replica's
    held prefix counts only while its load is under ``balance`` x its pool's mean plus one, so one hot prefix
    cannot swamp one replica, and a replica serving one conversation keeps it at light load;
  * spread: among equals (a new prompt on idle replicas), rendezvous hashing of the prompt's first block picks
    the replica, so new conversations spread over the pool's caches and each lands where its prefix would;
  * fall over: replicas without headroom come after all those with it, soonest predicted first token first; a
    replica at its limit (slots + queue) is never ranked, so an empty ranking means every pool is full (429).
"""
from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

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
    prefill_tps: float = math.inf      # its pool's prefill rate, prompt tokens/s (inf: unknown, never the limit)
    pending_prefill: float = 0.0       # prompt tokens routed to it and not prefilled yet


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
        self.capacity = int(blocks_per_replica)
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
         ttft_target_s: float | None = None, affinity_key: bytes = b"") -> list[Replica]:
    """The replicas to try for one request, best first (module docstring). ``matched``: leading blocks each
    replica holds (``PrefixIndex.match``); a replica absent from it holds none. ``ttft_target_s``: the SLO's
    TTFT (None: headroom is batch slots alone). ``affinity_key``: the prompt's first block hash (rendezvous
    tie-break). Replicas at their limit are left out: an empty list means every replica is full."""
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
        if r.load < r.slots and (ttft_target_s is None or ttft <= ttft_target_s):
            return (0, dollars, r.load / max(1, r.slots), spread)
        return (1, ttft, (r.load - r.slots + 1) / max(1, r.slots), dollars, spread)

    return sorted(open_, key=key)


def dollars_per_work(price_per_hour: float, capacity_work_per_s: float) -> float:
    """A pool's $ per work unit at full use; a pool of unknown capacity is priced as dear as possible."""
    if capacity_work_per_s <= 0 or not math.isfinite(capacity_work_per_s):
        return math.inf
    return max(0.0, price_per_hour) / 3600.0 / capacity_work_per_s
