"""Which pool serves a request at the vLLM router (moe_runtime.vllm_router; docs/operator.md "One endpoint per
deployment").

Pure and torch-, vllm- and ray-free. The router in front of Ray Serve LLM apps sees no token ids (vLLM tokenizes
inside the LLM server), so it ranks pools, not replicas: one ``routing.Replica`` entry per pool, with
``load`` = requests this router has in flight on the pool, ``slots`` = running replicas x max_num_seqs and
``limit`` = slots + running replicas x maxQueue, priced at the pool's $ per work unit from the plan. Prefix
affinity inside a pool is left to Ray Serve LLM's own request router on the pool's LLM server deployment.
``routing.rank`` is used unchanged: cheapest pool with headroom first, then the least queued, a full pool never.

Headroom also holds the SLO where the plan gives the pool's rates and the spec its targets, as the torch
ingress does per replica, here per pool: the predicted TTFT (prompt tokens this router sent to the pool and has
not seen a first token of, plus this prompt, at the pool's prefill rate: its running replicas' rates, each at
what its decode batch leaves, ``routing.prefill_rate``) and the decode step of a replica at the pool's mean load
against the TPOT target. Without these, a batch-slots-only headroom filled the cheap pool with long prompts (the
simulator's Mooncake replay: 44% SLO attainment against least-loaded's 92%, docs/benchmarks.md). Not here: the
per-replica TPOT ledger (``routing.InterferenceLedger``): the router does not know which replica Serve picks; and
both figures assume Serve spreads a pool's requests evenly (its prefix-affinity router may not).
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping, Sequence

from .routing import Replica, Weights, decode_step_s, prefill_rate, rank

CHARS_PER_TOKEN = 4        # rough prompt size without a tokenizer: it scales every pool's dollars alike
DEFAULT_OUTPUT_TOKENS = 256
CHUNK_TOKENS = 2048        # vLLM's max_num_batched_tokens for online serving (its default on most GPUs; the
                           # simulator's DEFAULT_PREFILL_CHUNK_TOKENS): the prompt a step carries beside decode


@dataclass(frozen=True)
class Pool:
    """One pool behind the router: its Serve app and LLM server deployment (render/llm_names.py), its per-replica
    batch slots (vLLM max_num_seqs = spec maxBatchSize) and queue (maxQueue), its $ per work unit (render/serve.py
    ``_routing``; 0 when the plan gives no price: pools then rank by load alone)."""

    name: str
    app_name: str
    deployment: str
    max_num_seqs: int
    max_queue: int
    dollars_per_work: float = 0.0
    prefill_tps: float = math.inf   # one replica's prompt tokens/s (the plan's; inf: unknown, TTFT not predicted)
    decode_tps: float = math.inf    # one replica's generated tokens/s at a full batch (the plan's)


@dataclass(frozen=True)
class Decision:
    """``route``: try ``pools`` in order (fall over to the next on back-pressure); ``full``: every running pool is
    at its limit (429); ``wait``: no pool has a running replica (hold the request until one has, or 503)."""

    kind: str
    pools: tuple[str, ...] = ()


def estimate_tokens(body: Mapping) -> tuple[int, int]:
    """(prompt tokens, output tokens) of an OpenAI request body, roughly: characters / 4 and max_tokens."""
    if "messages" in body:
        text = "".join(str(m.get("content", "")) if isinstance(m, Mapping) else str(m)
                       for m in body.get("messages") or [])
    else:
        prompt = body.get("prompt", "")
        text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt or []))
    out = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_OUTPUT_TOKENS
    return max(1, len(text) // CHARS_PER_TOKEN), int(out) if isinstance(out, int) and out > 0 else DEFAULT_OUTPUT_TOKENS


def decide(pools: Sequence[Pool], replicas: Mapping[str, int], in_flight: Mapping[str, int], *,
           prompt_tokens: int, output_tokens: int, weights: Weights = Weights(),
           pending_prefill: Mapping[str, float] | None = None, ttft_target_s: float | None = None,
           tpot_target_s: float | None = None) -> Decision:
    """The pools to try for one request, best first. ``replicas``: running replicas per pool (a pool at zero is
    skipped); ``in_flight``: requests this router has on each pool now; ``pending_prefill``: prompt tokens it
    sent to each pool and has not seen a first token of; the targets: the SLO (None: that side is not guarded)."""
    entries = []
    pending_prefill = pending_prefill or {}
    for p in pools:
        n = int(replicas.get(p.name, 0))
        if n <= 0:
            continue
        seqs = max(1, p.max_num_seqs)
        slots = n * seqs
        load = int(in_flight.get(p.name, 0))
        per = load / n   # Serve's router spreads a pool's requests over its replicas
        busy = decode_step_s(math.ceil(per), seqs, p.decode_tps) if load else 0.0
        # the queue spreads over the pool's replicas; this prompt is prefilled on one of them:
        # TTFT = pending / (n x rate) + prompt / rate = (pending / n + prompt) / rate
        entries.append(Replica(id=p.name, pool=p.name, load=load, slots=slots,
                               limit=slots + n * max(0, p.max_queue), dollars_per_work=p.dollars_per_work,
                               prefill_tps=prefill_rate(p.prefill_tps, busy, CHUNK_TOKENS),
                               pending_prefill=float(pending_prefill.get(p.name, 0.0)) / n,
                               tpot_s=decode_step_s(math.ceil(per) + 1, seqs, p.decode_tps)))
    if not entries:
        return Decision("wait")
    order = rank(entries, {}, prompt_tokens=prompt_tokens, output_tokens=output_tokens, block_tokens=1,
                 weights=weights, ttft_target_s=ttft_target_s, tpot_target_s=tpot_target_s)
    return Decision("route", tuple(r.pool for r in order)) if order else Decision("full")


class WakeTimeout(Exception):
    """No pool got a running replica before the request's deadline: answer 503 with Retry-After."""


class WaitingFull(Exception):
    """The bounded wake queue is full: answer 503 with Retry-After at once (as the torch ingress does)."""


class WakeQueue:
    """Requests held while every pool is at zero: at most ``max_waiting`` at once, each for at most ``timeout_s``.
    ``waiting`` is the gauge ``moe_router_waiting_requests{pool=""}`` (docs/contracts.md section 4), which the
    autoscaler reads as demand to scale a pool up from zero."""

    def __init__(self, max_waiting: int, timeout_s: float, poll_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic):
        self.max_waiting, self.timeout_s, self.poll_s, self.clock = int(max_waiting), float(timeout_s), poll_s, clock
        self.waiting = 0

    async def wait(self, any_up: Callable[[], Awaitable[bool]]) -> None:
        """Return once ``any_up()`` is true; raise WaitingFull when the queue is full, WakeTimeout past the
        deadline. Never waits longer than ``timeout_s``."""
        if await any_up():
            return
        if self.waiting >= self.max_waiting:
            raise WaitingFull()
        self.waiting += 1
        try:
            deadline = self.clock() + self.timeout_s
            while True:
                left = deadline - self.clock()
                if left <= 0:
                    raise WakeTimeout()
                await asyncio.sleep(min(self.poll_s, left))
                if await any_up():
                    return
        finally:
            self.waiting -= 1
