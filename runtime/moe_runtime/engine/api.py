"""The interface between the serving layer (HTTP, Ray Serve, metrics) and the torch engine.

Both sides code against these types only. Usage::

    stream = await engine.generate(prompt_ids, SamplingParams(max_tokens=16), request_id="r1")
    # QueueFull / PromptTooLong are raised by the await above, before any event
    async for event in stream:          # one TokenEvent per generated token, then a final one
        ...
    # leaving the loop early / stream.aclose() / cancelling the task cancels the sequence
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Protocol, runtime_checkable


@dataclass
class SamplingParams:
    """Per-request decoding settings. temperature 0 = greedy; seed makes sampling reproducible."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)


@dataclass
class Usage:
    """Token accounting of one request, DeepSeek-style: hit + miss == prompt_tokens."""

    prompt_tokens: int
    completion_tokens: int
    prompt_cache_hit_tokens: int
    prompt_cache_miss_tokens: int


@dataclass
class TokenEvent:
    """One streamed step. token_id is None on a final event that carries no new token."""

    token_id: int | None
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "cancelled" | "error"
    usage: Usage | None = None  # set on the final event
    error: str | None = None  # message when finish_reason == "error"
    # on a sequence's first event only: seconds from the start of its own prefill to this event, on the engine's
    # clock. A duration, so it holds wherever the engine runs (another process or node under Ray Serve): the front
    # takes it from its own time to this event to get the queue wait (moe_queue_wait_seconds)
    prefill_s: float | None = None


class QueueFull(Exception):
    """The bounded waiting queue is full; the client should retry after retry_after_s seconds."""

    def __init__(self, retry_after_s: float, message: str | None = None):
        self.retry_after_s = float(retry_after_s)
        super().__init__(message or f"engine queue is full; retry after {self.retry_after_s:.1f} s")


class NoReplicaReady(Exception):
    """No replica of any pool is ready, and none became ready within the wait the deployment allows (or the queue
    of requests waiting for one is full): HTTP 503, retry after retry_after_s."""

    def __init__(self, retry_after_s: float, message: str):
        self.retry_after_s = float(retry_after_s)
        super().__init__(message)


class PromptTooLong(ValueError):
    """prompt tokens (+ max_tokens) exceed the model's max context."""

    def __init__(self, prompt_tokens: int, max_context_tokens: int, message: str | None = None):
        self.prompt_tokens = prompt_tokens
        self.max_context_tokens = max_context_tokens
        super().__init__(
            message
            or f"prompt has {prompt_tokens} tokens but the maximum context is {max_context_tokens} tokens"
        )


@dataclass
class EngineStats:
    """A snapshot for /metrics. Counters are cumulative since start; bytes are bytes."""

    queue_depth: int = 0
    running: int = 0
    kv_cache_bytes: int = 0
    prefix_cache_bytes: dict[str, int] = field(default_factory=lambda: {"memory": 0, "disk": 0})
    prefix_cache_disk_write_failures: int = 0  # disk-tier writes that failed (ENOSPC, ...): best effort, counted
    # disk-tier block files rejected on read (each a miss, the file removed), by reason: "corrupt" | "foreign"
    prefix_cache_disk_bad_blocks: dict[str, int] = field(default_factory=lambda: {"corrupt": 0, "foreign": 0})
    # kind -> tokens: "prompt" (computed prompt tokens, i.e. cache misses), "cached_prompt", "generated"
    tokens: dict[str, int] = field(default_factory=lambda: {"prompt": 0, "cached_prompt": 0, "generated": 0})
    # outcome -> finished requests: "ok", "error", "rejected", "cancelled"
    requests: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0, "rejected": 0, "cancelled": 0})
    expert_tokens: list[list[int]] = field(default_factory=list)  # [moe_layer][expert] routed tokens
    capacity_tokens_per_second: float = 0.0  # generated-token equivalents the replica can sustain


@runtime_checkable
class AsyncEngine(Protocol):
    model_name: str
    max_context_tokens: int
    tokenizer: Any  # tokenizers.Tokenizer with .eos_token_id and .chat_template (str | None) attributes

    async def generate(
        self, prompt_token_ids: list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[TokenEvent]: ...

    def stats(self) -> EngineStats: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
