"""Roofline capacity per replica, checked against the formula written out independently here."""
from __future__ import annotations

import pytest

from hf_configs import DEEPSEEK_V3, MIXTRAL_8X7B, QWEN3_30B_A3B
from moe_operator.catalog import Catalog
from moe_operator.planning import capacity as cap
from moe_operator.planning.model import model_facts
from moe_operator.planning.parallelism import choose_parallelism


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.default()


def test_single_device_numbers_by_hand(catalog):
    """One L4, Qwen3-30B-A3B int8 (no interconnect term): prefill and decode from first principles."""
    f = model_facts(QWEN3_30B_A3B)
    l4 = catalog.get("nvidia-l4")
    ctx, batch = 2048, 8
    t = cap.replica_throughput(f, l4, 1, "int8", batch, ctx)

    # prefill: T tokens per step, each 2 * active FLOPs + attention over P/2 earlier tokens (P = ctx / 2)
    p = ctx / 2
    tokens = min(8192, batch * p)
    attn = 2 * 48 * 32 * (128 + 128) * (p / 2)
    compute = tokens * (2 * f.active_params + attn) / (242e12 * cap.PREFILL_EFFICIENCY)
    embed = 2 * 151936 * 2048
    weight_bytes = embed * 2 + (f.total_params - embed) * 1
    memory = weight_bytes / (300e9 * cap.BANDWIDTH_EFFICIENCY)
    overhead = 48 * l4.step_overhead_seconds
    assert t.prefill_tps == pytest.approx(tokens / (max(compute, memory) + overhead))
    assert t.compute_dtype == "int8"

    # decode: bytes of always-used weights + distinct experts 8 tokens touch + KV of 8 sequences at ctx / 2
    expert = 3 * 2048 * 768
    routed_total = 48 * 128 * expert
    touched = 48 * 128 * (1 - (1 - 8 / 128) ** batch)
    kv = batch * (48 * 2 * 4 * 128 * 2) * (ctx / 2)
    bytes_read = (weight_bytes - routed_total) + touched * expert + kv
    mem_time = bytes_read / (300e9 * cap.BANDWIDTH_EFFICIENCY)
    flop_time = batch * (2 * f.active_params + 2 * 48 * 32 * 256 * (ctx / 2)) / (242e12 * cap.DECODE_COMPUTE_EFFICIENCY)
    assert t.decode_tps == pytest.approx(batch / (max(mem_time, flop_time) + overhead))
    assert t.decode_bound == "memory"
    assert t.cached_prefill_tps == pytest.approx(t.prefill_tps / cap.CACHED_TOKEN_COST)


def test_interconnect_term_by_hand(catalog):
    f = model_facts(MIXTRAL_8X7B)
    h100 = catalog.get("nvidia-h100")
    par = choose_parallelism(8, f)  # tp 8, ep 8
    tokens = 16
    a2a = tokens * 32 * 2 * 2 * 4096 * 2 * (7 / 8)
    allreduce = tokens * 32 * 2 * 4096 * 2 * 2 * (7 / 8)
    expected = (a2a + allreduce) / (8 * 900e9 * cap.INTERCONNECT_EFFICIENCY)
    assert cap.comm_seconds(f, par, h100, tokens) == pytest.approx(expected)
    assert cap.comm_seconds(f, choose_parallelism(1, f), h100, tokens) == 0.0


def test_touched_experts_saturates():
    f = model_facts(DEEPSEEK_V3)
    assert cap.touched_experts(f, 1) == pytest.approx(58 * 8)  # one token reads its top-8
    assert cap.touched_experts(f, 10_000) == pytest.approx(58 * 256)  # a big batch reads every expert


def test_roofline_responds_to_hardware_the_right_way(catalog):
    f = model_facts(DEEPSEEK_V3)
    h800 = cap.replica_throughput(f, catalog.get("nvidia-h800"), 8, "int4", 64, 4096)
    h200 = cap.replica_throughput(f, catalog.get("nvidia-h200"), 8, "int4", 64, 4096)
    assert h800.decode_bound == "memory"
    assert h200.decode_tps > h800.decode_tps  # 4.8 vs 3.35 TB/s
    fp8 = cap.replica_throughput(f, catalog.get("nvidia-h200"), 16, "fp8", 64, 4096)
    bf16 = cap.replica_throughput(f, catalog.get("nvidia-h200"), 16, "none", 64, 4096)
    assert fp8.compute_dtype == "fp8" and bf16.compute_dtype == "bf16"
    assert fp8.prefill_tps > 1.5 * bf16.prefill_tps  # twice the FLOP/s, minus fixed costs


def test_compute_dtype_falls_back_to_16_bit(catalog):
    assert cap.compute_dtype(catalog.get("nvidia-a100-80gb"), "fp8") == "bf16"  # no fp8 units: weight-only
    assert cap.compute_dtype(catalog.get("ascend-310p"), "none") == "fp16"
    assert cap.compute_dtype(catalog.get("ascend-910b"), "int8") == "int8"
    assert cap.compute_dtype(catalog.get("nvidia-h100"), "int4") == "bf16"


def test_pool_capacity_weights_tokens_by_their_cost(catalog):
    f = model_facts(MIXTRAL_8X7B)
    pc = cap.replica_capacity(f, catalog.get("nvidia-h100"), 2, "none", 16, 4096, price_per_device_hour=3.0)
    assert pc.price_per_hour == 6.0
    assert pc.weighted_tps == pc.decode_tps
    assert pc.busy_fraction(pc.prefill_tps, 0, 0) == pytest.approx(1.0)
    assert pc.busy_fraction(0, 0, pc.decode_tps / 2) == pytest.approx(0.5)
    assert pc.weighted(pc.prefill_tps, 0, 0) == pytest.approx(pc.decode_tps)
    # a cached prompt token weighs a tenth of a computed one
    assert pc.weighted(0, 1000, 0) == pytest.approx(pc.weighted(100, 0, 0))


def test_cpu_tiny_model_by_hand_with_per_sequence_overhead(catalog):
    """On cpu the torch engine runs float32 and loops over sequences in attention: both enter the decode step."""
    f = model_facts(None, "tiny")
    cpu = catalog.get("cpu")
    ctx, b = 2048, 8
    t = cap.replica_throughput(f, cpu, 1, "none", b, ctx)
    weight_bytes = f.total_params * 4  # float32
    routed = f.num_moe_layers * f.num_experts * f.params_per_expert * 4
    touched = f.num_moe_layers * 8 * (1 - (1 - 2 / 8) ** b)
    kv = b * (4 * 2 * 4 * 32 * 4) * (ctx / 2)  # layers x K,V x kv heads x head_dim x fp32
    memory = (weight_bytes - routed + touched * f.params_per_expert * 4 + kv) / (
        cpu.memory_bandwidth_gbps * 1e9 * cap.BANDWIDTH_EFFICIENCY
    )
    compute = (
        b
        * (2 * f.active_params + 2 * 4 * 8 * 64 * (ctx / 2))
        / (cpu.tflops.bf16 * 1e12 * cap.DECODE_COMPUTE_EFFICIENCY)
    )
    overhead = 4 * (cpu.step_overhead_seconds + b * cpu.sequence_overhead_seconds)
    assert t.decode_step_seconds == pytest.approx(max(memory, compute) + overhead)


@pytest.mark.parametrize("batch, ctx, measured", [(1, 512, 61), (8, 512, 358), (16, 2048, 294)])
def test_cpu_tiny_model_matches_the_recorded_measurement(catalog, batch, ctx, measured):
    """Within 2x of the torch engine's decode tokens/s recorded in docs/benchmarks/planning.md (ctx = 2 x attended)."""
    t = cap.replica_throughput(model_facts(None, "tiny"), catalog.get("cpu"), 1, "none", batch, ctx)
    assert measured / 2 < t.decode_tps < measured * 2
