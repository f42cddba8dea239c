"""Tensor/data/expert parallel sizes per replica."""
from __future__ import annotations

import pytest

from hf_configs import DEEPSEEK_V3, MIXTRAL_8X7B, QWEN15_MOE_A27B
from moe_operator.errors import SpecInvalid
from moe_operator.planning.model import model_facts
from moe_operator.planning.parallelism import choose_parallelism, valid_device_counts


@pytest.mark.parametrize("devices", [1, 2, 4, 8, 16, 32])
def test_sizes_multiply_to_the_device_count(devices):
    f = model_facts(DEEPSEEK_V3)
    p = choose_parallelism(devices, f)
    assert p.tensor_parallel * p.data_parallel == devices
    assert p.expert_parallel * p.expert_tensor_parallel == devices
    assert p.expert_parallel == devices  # 256 experts divide over any power of two up to 256
    assert p.experts_per_shard * p.expert_parallel == 256
    assert p.tensor_parallel <= 8  # tensor parallelism stays inside a node


def test_experts_that_do_not_divide_fall_back_to_expert_tensor_parallel():
    f = model_facts(QWEN15_MOE_A27B)  # 60 experts of width 1408
    p = choose_parallelism(8, f)
    assert (p.expert_parallel, p.expert_tensor_parallel, p.experts_per_shard) == (4, 2, 15)
    assert 60 % p.expert_parallel == 0 and 1408 % p.expert_tensor_parallel == 0


def test_grouped_kv_heads_limit_tensor_parallel():
    f = model_facts(MIXTRAL_8X7B)  # 32 heads, 8 KV heads
    assert choose_parallelism(8, f).tensor_parallel == 8
    assert choose_parallelism(16, f).tensor_parallel == 8  # node limit; data parallel 2
    assert choose_parallelism(16, f).data_parallel == 2


@pytest.mark.parametrize("devices", [3, 5, 6, 9, 12])
def test_no_valid_split_is_a_clear_error(devices):
    f = model_facts(MIXTRAL_8X7B)  # 8 experts of width 14336 = 2^11 * 7
    with pytest.raises(SpecInvalid) as err:
        choose_parallelism(devices, f)
    assert err.value.reason == "DevicesDoNotDivideExperts"
    msg = str(err.value)
    assert f"devicesPerReplica {devices}" in msg and "8 experts" in msg
    suggested = [int(n) for n in msg.split("use one of ")[1].split(" devices")[0].split(", ")]
    assert suggested[:3] == [1, 2, 4] and 8 in suggested and devices not in suggested  # what to use instead
    assert suggested == [n for n in valid_device_counts(f) if n <= max(2 * devices, 16)]


def test_valid_device_counts_agree_with_choose():
    f = model_facts(MIXTRAL_8X7B)
    counts = valid_device_counts(f, limit=32, whole_nodes=False)
    for d in range(1, 33):
        if d in counts:
            choose_parallelism(d, f)
        else:
            with pytest.raises(SpecInvalid):
                choose_parallelism(d, f)
    assert 7 in counts  # 8 experts do not divide by 7, but 14336 does: each expert split over 7 devices


def test_suggested_counts_are_schedulable():
    f = model_facts(MIXTRAL_8X7B)
    assert valid_device_counts(f, limit=32) == [1, 2, 4, 7, 8, 16, 32]  # 14 valid for experts, but spans 1.75 nodes
