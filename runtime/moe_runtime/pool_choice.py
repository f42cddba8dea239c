"""Which pool serves a request at the vLLM router (moe_runtime.vllm_router; docs/operator.md "One endpoint per
deployment").

Pure and torch-, vllm- and ray-free. The router in front of Ray Serve LLM apps sees no token ids (vLLM tokenizes
inside the LLM server), so it ranks pools, not replicas: one ``routing.Replica`` entry per pool, with
``load`` = requests this router has in flight on the pool, ``slots`` = running replicas x max_num_seqs and
``limit`` = slots + running replicas x maxQueue, priced at the pool's $ per work unit from the plan. Prefix
affinity inside a pool is left to Ray Serve LLM's own request router on the pool's LLM server deployment.
``routing.rank`` is used unchanged: cheapest pool with headroom first, then the least queued, a full pool never.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Mapping, Sequence

from .routing import Replica, Weights, rank

CHARS_PER_TOKEN = 4        # rough prompt size without a tokenizer: it scales every pool's dollars alike
DEFAULT_OUTPUT_TOKENS = 256


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
           prompt_tokens: int, output_tokens: int, weights: Weights = Weights()) -> Decision:
    """The pools to try for one request, best first. ``replicas``: running replicas per pool (a pool at zero is
    skipped); ``in_flight``: requests this router has on each pool now."""
    entries = []
    for p in pools:
        n = int(replicas.get(p.name, 0))
        if n <= 0:
            continue
        slots = n * max(1, p.max_num_seqs)
        entries.append(Replica(id=p.name, pool=p.name, load=int(in_flight.get(p.name, 0)), slots=slots,
                               limit=slots + n * max(0, p.max_queue), dollars_per_work=p.dollars_per_work))
    if not entries:
        return Decision("wait")
    order = rank(entries, {}, prompt_tokens=prompt_tokens, output_tokens=output_tokens, block_tokens=1,
                 weights=weights)
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
