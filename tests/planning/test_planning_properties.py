"""Invariants of planning over generated models and device counts (hypothesis)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from moe_operator.catalog import Catalog
from moe_operator.errors import SpecInvalid
from moe_operator.planning.capacity import replica_capacity, replica_throughput
from moe_operator.planning.cost import cost_per_million_tokens
from moe_operator.planning.model import model_facts
from moe_operator.planning.parallelism import choose_parallelism
from moe_operator.planning.initial_placement import initial_placement

CATALOG = Catalog.default()


@st.composite
def mixtral_like(draw):
    heads = draw(st.sampled_from([4, 8, 16, 32]))
    return {
        "model_type": "mixtral",
        "hidden_size": heads * draw(st.sampled_from([32, 64, 128])),
        "intermediate_size": draw(st.sampled_from([256, 384, 1024, 1408, 14336])),
        "num_hidden_layers": draw(st.integers(1, 8)),
        "num_attention_heads": heads,
        "num_key_value_heads": draw(st.sampled_from([h for h in (1, 2, 4, 8) if heads % h == 0])),
        "vocab_size": draw(st.integers(64, 4096)),
        "num_local_experts": (experts := draw(st.integers(1, 64))),
        "num_experts_per_tok": draw(st.integers(1, experts)),
    }


@settings(max_examples=60, deadline=None)
@given(config=mixtral_like(), devices=st.integers(1, 32))
def test_every_valid_split_places_every_expert_once(config, devices):
    facts = model_facts(config)
    try:
        par = choose_parallelism(devices, facts)
    except SpecInvalid as exc:
        assert exc.reason == "DevicesDoNotDivideExperts"
        return
    assert par.tensor_parallel * par.data_parallel == devices == par.expert_parallel * par.expert_tensor_parallel
    assert facts.num_experts % par.expert_parallel == 0
    assert facts.expert_intermediate_size % par.expert_tensor_parallel == 0
    assert facts.num_attention_heads % par.tensor_parallel == 0
    placement = initial_placement(facts, par, CATALOG.get("nvidia-h100"))
    shards = placement["layers"][0]
    assert len(shards) == par.expert_parallel == len(placement["shards"])
    assert sorted(e for shard in shards for e in shard) == list(range(facts.num_experts))
    assert {len(shard) for shard in shards} == {par.experts_per_shard}


@settings(max_examples=40, deadline=None)
@given(config=mixtral_like(), batch=st.integers(1, 256), ctx=st.integers(128, 32768))
def test_more_bandwidth_and_batch_never_hurt_decode(config, batch, ctx):
    facts = model_facts(config)
    h800 = replica_throughput(facts, CATALOG.get("nvidia-h800"), 1, "none", batch, ctx)
    h200 = replica_throughput(facts, CATALOG.get("nvidia-h200"), 1, "none", batch, ctx)  # same FLOP/s, more bandwidth
    assert h200.decode_tps >= h800.decode_tps * (1 - 1e-9)
    bigger = replica_throughput(facts, CATALOG.get("nvidia-h800"), 1, "none", batch + 1, ctx)
    assert bigger.decode_tps >= h800.decode_tps * (1 - 1e-9)
    assert h800.prefill_tps > 0 and h800.cached_prefill_tps > h800.prefill_tps


@settings(max_examples=40, deadline=None)
@given(u1=st.floats(0.05, 1.0), u2=st.floats(0.05, 1.0), price=st.floats(0.01, 20))
def test_cost_falls_as_utilisation_rises(u1, u2, price):
    facts = model_facts(None, "tiny")
    cap = replica_capacity(facts, CATALOG.get("cpu"), 1, "none", 8, 2048, price)
    lo, hi = sorted((u1, u2))
    assert cost_per_million_tokens(cap, hi) <= cost_per_million_tokens(cap, lo) * (1 + 1e-12)
    assert abs(cost_per_million_tokens(cap, lo) * lo - cost_per_million_tokens(cap, hi) * hi) <= 1e-9 * price * 1e6
