"""What one replica of a pool can do, as the per-replica serving model uses it (the contract between
``moectl simulate``'s replica model and ``moectl simulate --calibrate``).

Units: tokens, seconds, tokens/s. One replica runs a continuous-batching engine:
  * ``max_batch`` sequences decode together (vLLM ``max_num_seqs``; our ``serving.maxBatchSize``);
  * every running sequence holds its prompt + generated tokens of KV cache; the sum stays <= ``kv_tokens``;
  * a decode step over b running sequences takes ``step_s(b) = step_base_s + step_per_seq_s * b`` seconds
    and gives each of them one token (the roofline: a fixed part streaming the weights, a part growing with
    the batch: KV reads, touched experts, per-sequence overhead);
  * a prompt prefills at ``prefill_tps`` computed tokens/s and ``cached_prefill_tps`` for prefix-cache hits;
  * chunked prefill: while prompts are waiting to prefill, every engine step carries up to
    ``prefill_chunk_tokens`` of them (vLLM ``max_num_batched_tokens``) beside the decode batch, so a step takes
    ``step_s(b) + chunk / prefill_tps`` seconds (time-additive: the work-unit model's capacity is kept);
  * ``ttft_overhead_s``: latency every first token pays outside the engine (HTTP, proxy, routing, tokenization):
    added to each request's TTFT (the client's view, which the SLO figures use), not to the TTFT the runtime's
    metrics report to the policy; it takes no engine time and changes no TPOT (the calibration's intercept; 0 by
    default).

Defaults come from the planner's (or the capacity annotation's) tokens/s; a calibration fitted on a replay of
the real endpoint replaces them.
"""
from __future__ import annotations

from dataclasses import dataclass

# Share of a full-batch decode step that does not depend on the batch (weights streamed once per step) when no
# measurement says otherwise: memory-bound MoE decode at batch 16-64 spends most of a step reading weights.
DEFAULT_FIXED_STEP_SHARE = 0.6
# vLLM's default max_num_batched_tokens for an OpenAI API server (V1, most GPUs): prompt tokens per engine step.
DEFAULT_PREFILL_CHUNK_TOKENS = 2048


@dataclass(frozen=True)
class ServingProfile:
    """One replica of a pool (see the module docstring for the model and units)."""

    max_batch: int
    kv_tokens: int
    prefill_tps: float
    cached_prefill_tps: float
    step_base_s: float
    step_per_seq_s: float
    prefill_chunk_tokens: int = DEFAULT_PREFILL_CHUNK_TOKENS
    ttft_overhead_s: float = 0.0

    def __post_init__(self):
        if self.max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if self.kv_tokens < 1:
            raise ValueError("kv_tokens must be >= 1")
        if min(self.prefill_tps, self.cached_prefill_tps) <= 0:
            raise ValueError("prefill rates must be > 0 tokens/s")
        if self.step_base_s < 0 or self.step_per_seq_s < 0 or self.step_base_s + self.step_per_seq_s <= 0:
            raise ValueError("decode step time must be > 0 s")
        if self.prefill_chunk_tokens < 1:
            raise ValueError("prefill_chunk_tokens must be >= 1")
        if not 0 <= self.ttft_overhead_s < float("inf"):
            raise ValueError("ttft_overhead_s must be >= 0 s")

    def step_s(self, batch: int) -> float:
        """Seconds of one decode step over ``batch`` running sequences."""
        return self.step_base_s + self.step_per_seq_s * max(1, batch)

    def decode_tps(self, batch: int) -> float:
        """Generated tokens/s of the replica with ``batch`` sequences running."""
        return max(1, batch) / self.step_s(batch)

    def prefill_s(self, computed: float, cached: float = 0.0) -> float:
        """Seconds of engine time to prefill ``computed`` + ``cached`` prompt tokens."""
        return computed / self.prefill_tps + cached / self.cached_prefill_tps

    def prefill_share(self, batch: int) -> float:
        """Share of engine time that goes to prefill while prompts are pending, ``batch`` sequences decoding:
        chunk / (decode step + chunk), 1 with nothing decoding."""
        if batch <= 0:
            return 1.0
        chunk = self.prefill_chunk_tokens / self.prefill_tps
        return chunk / (self.step_s(batch) + chunk)

    @classmethod
    def from_capacity(cls, prefill_tps: float, decode_tps: float, cached_prefill_tps: float, max_batch: int,
                      kv_tokens: int, fixed_share: float = DEFAULT_FIXED_STEP_SHARE) -> "ServingProfile":
        """A profile whose full-batch decode gives ``decode_tps`` (tokens/s at ``max_batch`` sequences), with
        ``fixed_share`` of that step independent of the batch."""
        step = max_batch / decode_tps
        return cls(max_batch=max_batch, kv_tokens=kv_tokens, prefill_tps=prefill_tps,
                   cached_prefill_tps=cached_prefill_tps, step_base_s=fixed_share * step,
                   step_per_seq_s=(1 - fixed_share) * step / max_batch)
