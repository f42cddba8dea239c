"""Memory fit per replica and the actionable message when it does not fit."""
from __future__ import annotations

import pytest

from hf_configs import DEEPSEEK_V3, MIXTRAL_8X7B
from moe_operator.catalog import Catalog
from moe_operator.planning.fit import OVERHEAD_FACTOR, memory_fit, not_fit_message
from moe_operator.planning.model import model_facts
from moe_operator.planning.parallelism import valid_device_counts

GIB = 2**30


def test_mixtral_bf16_numbers_by_hand():
    f = model_facts(MIXTRAL_8X7B)
    fit = memory_fit(f, "none", context_tokens=4096, batch_size=16, devices=2, device_memory_gib=80)
    weights = f.total_params * 2  # bf16 everywhere
    kv = 32 * 2 * 8 * 128 * 2 * 4096 * 16  # layers x (K,V) x kv heads x head_dim x bf16 x tokens x sequences
    assert fit.weights_gib == pytest.approx(weights / GIB)
    assert fit.kv_cache_gib == pytest.approx(kv / GIB) == pytest.approx(8.0)
    assert fit.needed_gib == pytest.approx((weights + kv) * OVERHEAD_FACTOR / GIB)
    assert fit.available_gib == 160
    assert fit.fits == (fit.needed_gib <= 160)


def test_quantization_shrinks_the_body_not_the_embeddings():
    f = model_facts(DEEPSEEK_V3)
    embed = 2 * 129280 * 7168
    fp8 = memory_fit(f, "fp8", 4096, 1, 8, 80)
    int4 = memory_fit(f, "int4", 4096, 1, 8, 80)
    assert fp8.weights_gib * GIB == pytest.approx(embed * 2 + (f.total_params - embed) * 1.0)
    assert int4.weights_gib * GIB == pytest.approx(embed * 2 + (f.total_params - embed) * (0.5 + 4 / 128))


def test_deepseek_v3_fp8_does_not_fit_8_h800_and_says_what_would():
    catalog = Catalog.default()
    f = model_facts(DEEPSEEK_V3)
    fit = memory_fit(f, "fp8", 4096, 16, 8, catalog.get("nvidia-h800").memory_gib)
    assert not fit.fits  # 671B at 1 byte is ~626 GiB; 8 x 80 GiB = 640 GiB leaves no room for overhead
    msg = not_fit_message(
        f, fit, pool="h800", accelerator="nvidia-h800", devices=8, quantization="fp8", context_tokens=4096,
        batch_size=16, catalog=catalog, valid_device_counts=valid_device_counts(f),
    )
    assert f"{fit.needed_gib:.1f} GiB" in msg and "640.0 GiB" in msg
    assert "quantization: int4" in msg
    assert "devicesPerReplica: 16" in msg
    assert "accelerator: nvidia-h200" in msg  # 8 x 141 GiB, fp8-capable
    assert "ascend" not in msg  # Ascend has no fp8


def test_message_when_nothing_single_helps():
    catalog = Catalog.default()
    f = model_facts(DEEPSEEK_V3)
    fit = memory_fit(f, "int4", 4096, 1, 1, catalog.get("nvidia-l4").memory_gib)
    msg = not_fit_message(
        f, fit, pool="l4", accelerator="nvidia-l4", devices=1, quantization="int4", context_tokens=4096,
        batch_size=1, catalog=catalog, valid_device_counts=valid_device_counts(f),
    )
    # the smallest device count with an expert split (powers of two for 256 experts of width 2048) that holds it
    smallest = min(n for n in valid_device_counts(f) if n * 24 >= fit.needed_gib)
    assert smallest == 32  # 16 x 24 GiB = 384 GiB is just short of ~385 GiB
    assert f"devicesPerReplica: {smallest} " in msg
    assert "quantization: int4" not in msg


def test_cpu_pools_count_float32():
    """The torch engine runs float32 on cpu: unquantized weights and the KV cache take 4 bytes an element there."""
    from moe_operator.planning.fit import dense_bytes

    f = model_facts(None, "tiny")
    assert dense_bytes("cpu") == 4.0 and dense_bytes("nvidia") == 2.0
    fit = memory_fit(f, "none", 2048, 8, 1, 16, dense=dense_bytes("cpu"))
    assert fit.weights_gib * GIB == pytest.approx(f.total_params * 4)
    assert fit.kv_cache_gib * GIB == pytest.approx(4 * 2 * 4 * 32 * 4 * 2048 * 8)  # layers, K+V, kv heads, head_dim
    int8 = memory_fit(f, "int8", 2048, 8, 1, 16, dense=4.0)
    assert int8.weights_gib * GIB == pytest.approx(f.embedding_params * 4 + (f.total_params - f.embedding_params) * 1)
