"""Property tests of the expert balancer: every placement it returns is one the runtime can serve."""
from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moe_operator.errors import UserError
from moe_operator.planning.placement import Device, balance, to_placement_json


@st.composite
def problems(draw, grouped: bool = False):
    """Random loads [L][E], devices (speed, slots, node) and a redundant-slot count."""
    num_groups = draw(st.integers(1, 4)) if grouped else None
    per_group = draw(st.integers(1, 4)) if grouped else None
    num_experts = num_groups * per_group if grouped else draw(st.integers(1, 12))
    num_layers = draw(st.integers(1, 3))
    load = st.one_of(st.just(0.0), st.floats(0, 1e6, allow_nan=False, allow_infinity=False), st.integers(0, 50))
    loads = draw(st.lists(st.lists(load, min_size=num_experts, max_size=num_experts),
                          min_size=num_layers, max_size=num_layers))
    num_devices = draw(st.integers(1, 7))
    num_nodes = draw(st.integers(1, 3))
    devices = [
        Device(
            name=f"d{i}",
            speed=draw(st.sampled_from([0.3, 0.6, 1.0, 1.0, 2.5])),
            slots=draw(st.integers(0, num_experts + 1)),
            node=f"n{i % num_nodes}",
        )
        for i in range(num_devices)
    ]
    redundant = draw(st.integers(0, 2 * num_experts))
    return loads, devices, redundant, num_groups


def check_servable(placement, loads, devices, redundant):
    """The invariants of docs/placement.md, checked layer by layer."""
    num_experts = len(loads[0])
    assert placement.num_layers == len(loads)
    for layer in placement.layers:
        # slot count exact: every physical slot holds one copy
        assert len(layer.slot_expert) == len(layer.slot_device) == num_experts + redundant
        copies = Counter(layer.slot_expert)
        # every expert at least once, and replicas[] counts the copies
        assert set(copies) == set(range(num_experts))
        assert [copies[e] for e in range(num_experts)] == list(layer.replicas)
        # memory: a device holds at most its slots; never two copies of one expert on a device
        per_device = Counter(layer.slot_device)
        for d, dev in enumerate(devices):
            assert per_device[d] <= dev.slots
            held = layer.experts_on(d)
            assert len(held) == len(set(held)) == per_device[d]
        assert list(layer.slot_device) == sorted(layer.slot_device)
    # the contract JSON lists the same copies
    doc = to_placement_json(placement)
    assert [s["name"] for s in doc["shards"]] == [d.name for d in devices]
    for entry, layer in zip(doc["layers"] * (placement.num_layers if len(doc["layers"]) == 1 else 1),
                            placement.layers):
        assert sum(map(len, entry)) == len(layer.slot_expert)


def feasible(loads, devices, redundant) -> bool:
    num_experts = len(loads[0])
    return num_experts + redundant <= sum(min(d.slots, num_experts) for d in devices)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_every_placement_is_servable_and_deterministic(problem):
    loads, devices, redundant, _ = problem
    if not feasible(loads, devices, redundant):
        with pytest.raises(UserError, match="slots"):
            balance(loads, devices, redundant)
        return
    placement = balance(loads, devices, redundant)
    check_servable(placement, loads, devices, redundant)
    # deterministic: the same input gives the same placement, also from fresh copies of the input
    again = balance([list(row) for row in loads], [Device(**vars(d)) for d in devices], redundant)
    assert again == placement


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(grouped=True))
def test_groups_stay_on_one_node(problem):
    loads, devices, redundant, num_groups = problem
    try:
        placement = balance(loads, devices, redundant, num_groups=num_groups)
    except UserError as exc:
        # only a capacity shortfall may refuse a grouped problem
        assert "slots" in str(exc) or "fit" in str(exc) or "cannot be placed" in str(exc)
        return
    check_servable(placement, loads, devices, redundant)
    size = len(loads[0]) // num_groups
    if len({d.node for d in devices}) > 1:
        for layer in placement.layers:
            for g in range(num_groups):
                nodes = {devices[d].node for e, d in zip(layer.slot_expert, layer.slot_device) if e // size == g}
                assert len(nodes) == 1, f"group {g} spans nodes {nodes}"
    assert balance(loads, devices, redundant, num_groups=num_groups) == placement
