"""Capacity of one replica from a roofline: tokens/s for prefill, cached prefill and decode.

Formulas (docs/capacity-model.md derives and justifies them; every symbol is a name below):

    prefill step (T = min(PREFILL_STEP_TOKENS, B * P) prompt tokens, P = mean prompt = C / 2):
        compute  = T * (2 * active_params + attention_flops(P / 2)) / (D * peak_flops * PREFILL_EFFICIENCY)
        memory   = weight_bytes / (D * bandwidth * BANDWIDTH_EFFICIENCY)
        prefill_tps = T / (max(compute, memory) + comm(T) + overhead(T / P))
    decode step (B = maxBatchSize sequences, each attending to C / 2 tokens on average):
        bytes    = always_active_weight_bytes + touched_experts(B) * expert_bytes + B * kv_bytes_per_token * C / 2
        compute  = B * (2 * active_params + attention_flops(C / 2)) / (D * peak_flops * DECODE_COMPUTE_EFFICIENCY)
        decode_tps = B / (max(bytes / (D * bandwidth * BANDWIDTH_EFFICIENCY), compute) + comm(B) + overhead(B))
    cached_prefill_tps = prefill_tps / CACHED_TOKEN_COST

``overhead(S)`` = layers * (stepOverheadSeconds + S * sequenceOverheadSeconds) for a step over S sequences.
``touched_experts(B)`` = MoE layers * E * (1 - (1 - k/E)^B): the expected distinct routed experts a batch of B tokens
reads when each picks k of E uniformly. ``comm(T)`` = (all-to-all of expert dispatch/combine + tensor-parallel
all-reduces) bytes / (D * interconnect * INTERCONNECT_EFFICIENCY). Peak FLOP/s is the accelerator's figure for the
dtype the matmuls run in (fp8 / int8 when both weights and hardware support it, else 16-bit).
"""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict

from moe_operator.catalog import Accelerator
from moe_operator.planning.fit import dense_bytes, param_bytes, weights_bytes
from moe_operator.planning.model import ModelFacts
from moe_operator.planning.parallelism import Parallelism, choose_parallelism

# Named efficiency factors (fractions of the vendor peak a serving engine reaches; docs/capacity-model.md).
PREFILL_EFFICIENCY = 0.45          # model FLOP/s utilisation of large prefill GEMMs (MoE grouped GEMMs: 35-55%)
DECODE_COMPUTE_EFFICIENCY = 0.30   # FLOP/s utilisation when decode becomes compute-bound (small, skinny GEMMs)
BANDWIDTH_EFFICIENCY = 0.60        # share of peak memory bandwidth achieved streaming weights and KV
INTERCONNECT_EFFICIENCY = 0.50     # share of link bandwidth achieved by all-to-all / all-reduce of small messages
CACHED_TOKEN_COST = 0.10           # a prompt token read from the prefix cache costs this fraction of a computed one
PREFILL_STEP_TOKENS = 8192         # prompt tokens batched into one prefill step (vLLM max_num_batched_tokens)
ACTIVATION_BYTES = 2               # bytes per hidden-state element on the wire (bf16)


class PoolCapacity(BaseModel):
    """What one replica of a pool serves and costs. Tokens/s are per replica; price is US$ per replica-hour.

    ``weighted_tps`` is the replica's capacity in generated-token equivalents (= decode_tps): a prompt token weighs
    decode_tps / prefill_tps generated tokens, a cached prompt token decode_tps / cached_prefill_tps.
    """

    model_config = ConfigDict(frozen=True)

    prefill_tps: float
    decode_tps: float
    cached_prefill_tps: float
    price_per_hour: float

    @property
    def weighted_tps(self) -> float:
        return self.decode_tps

    def weighted(self, prompt_tps: float, cached_tps: float, generated_tps: float) -> float:
        """A demand (tokens/s by kind) in generated-token equivalents, comparable with ``weighted_tps``."""
        return self.busy_fraction(prompt_tps, cached_tps, generated_tps) * self.decode_tps

    def busy_fraction(self, prompt_tps: float, cached_tps: float, generated_tps: float) -> float:
        """Replicas' worth of time the demand takes: 1.0 = one replica fully busy."""
        return prompt_tps / self.prefill_tps + cached_tps / self.cached_prefill_tps + generated_tps / self.decode_tps


class ReplicaThroughput(BaseModel):
    """The roofline's intermediate figures for one replica (seconds per step, what bounds each phase)."""

    model_config = ConfigDict(frozen=True)

    prefill_tps: float
    decode_tps: float
    cached_prefill_tps: float
    prefill_bound: str          # compute | memory
    decode_bound: str           # compute | memory
    decode_step_seconds: float
    compute_dtype: str


def compute_dtype(accelerator: Accelerator, quantization: str) -> str:
    """The dtype matmuls run in: fp8/int8 when the weights are and the hardware supports it, else 16-bit."""
    if quantization in ("fp8", "int8") and accelerator.tflops.for_dtype(quantization) is not None:
        return quantization
    return "bf16" if accelerator.tflops.bf16 is not None else "fp16"


def touched_experts(facts: ModelFacts, tokens: float) -> float:
    """Expected distinct routed experts (summed over MoE layers) that ``tokens`` tokens read in one step."""
    e, k = facts.num_experts, facts.experts_per_token
    return facts.num_moe_layers * e * (1.0 - (1.0 - k / e) ** tokens)


def comm_seconds(facts: ModelFacts, par: Parallelism, accelerator: Accelerator, tokens: float) -> float:
    """Seconds on the interconnect per step of ``tokens`` tokens: expert all-to-all + tensor-parallel all-reduce."""
    if par.devices == 1:
        return 0.0
    h = facts.hidden_size * ACTIVATION_BYTES
    a2a = (
        tokens
        * facts.num_moe_layers
        * 2
        * facts.experts_per_token
        * h
        * (par.expert_parallel - 1)
        / par.expert_parallel
    )
    allreduce = tokens * facts.num_layers * 2 * h * 2 * (par.tensor_parallel - 1) / par.tensor_parallel
    return (a2a + allreduce) / (par.devices * accelerator.interconnect_gbps * 1e9 * INTERCONNECT_EFFICIENCY)


def replica_throughput(
    facts: ModelFacts,
    accelerator: Accelerator,
    devices: int,
    quantization: str,
    max_batch_size: int,
    max_context_tokens: int,
    parallelism: Optional[Parallelism] = None,
) -> ReplicaThroughput:
    """Prefill, cached-prefill and decode tokens/s of one replica (formulas in the module docstring)."""
    par = parallelism or choose_parallelism(devices, facts)
    dtype = compute_dtype(accelerator, quantization)
    flops = devices * accelerator.tflops.for_dtype(dtype) * 1e12  # type: ignore[operator]
    bandwidth = devices * accelerator.memory_bandwidth_gbps * 1e9 * BANDWIDTH_EFFICIENCY
    mean_prompt = max_context_tokens / 2

    def overhead(sequences: float) -> float:
        return facts.num_layers * (
            accelerator.step_overhead_seconds + sequences * accelerator.sequence_overhead_seconds
        )

    # prefill
    step_tokens = min(PREFILL_STEP_TOKENS, max_batch_size * mean_prompt)
    prefill_compute = step_tokens * (2 * facts.active_params + facts.attention_flops_per_token(mean_prompt / 2)) / (
        flops * PREFILL_EFFICIENCY
    )
    dense = dense_bytes(accelerator.vendor)
    prefill_memory = weights_bytes(facts, quantization, dense) / bandwidth
    prefill_tps = step_tokens / (
        max(prefill_compute, prefill_memory) + comm_seconds(facts, par, accelerator, step_tokens)
        + overhead(step_tokens / mean_prompt)
    )

    # decode
    b = max_batch_size
    expert_bytes = facts.params_per_expert * param_bytes(quantization, dense)
    always_bytes = weights_bytes(facts, quantization, dense) - facts.routed_expert_params * param_bytes(
        quantization, dense
    )
    kv_bytes = b * facts.kv_bytes_per_token(dense) * max_context_tokens / 2
    decode_memory = (always_bytes + touched_experts(facts, b) * expert_bytes + kv_bytes) / bandwidth
    decode_compute = b * (2 * facts.active_params + facts.attention_flops_per_token(max_context_tokens / 2)) / (
        flops * DECODE_COMPUTE_EFFICIENCY
    )
    step = max(decode_memory, decode_compute) + comm_seconds(facts, par, accelerator, b) + overhead(b)
    return ReplicaThroughput(
        prefill_tps=prefill_tps,
        decode_tps=b / step,
        cached_prefill_tps=prefill_tps / CACHED_TOKEN_COST,
        prefill_bound="compute" if prefill_compute >= prefill_memory else "memory",
        decode_bound="compute" if decode_compute >= decode_memory else "memory",
        decode_step_seconds=step,
        compute_dtype=dtype,
    )


def replica_capacity(
    facts: ModelFacts,
    accelerator: Accelerator,
    devices: int,
    quantization: str,
    max_batch_size: int,
    max_context_tokens: int,
    price_per_device_hour: float,
    parallelism: Optional[Parallelism] = None,
) -> PoolCapacity:
    """Per-replica capacity and price from plain numbers (``planning.pool_capacity`` does it from a spec's pool)."""
    t = replica_throughput(facts, accelerator, devices, quantization, max_batch_size, max_context_tokens, parallelism)
    return PoolCapacity(
        prefill_tps=t.prefill_tps,
        decode_tps=t.decode_tps,
        cached_prefill_tps=t.cached_prefill_tps,
        price_per_hour=devices * price_per_device_hour,
    )
