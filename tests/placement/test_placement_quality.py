"""The balancer against the baselines it must beat, and against the optimum on tiny problems."""
from __future__ import annotations

import itertools
import random

import pytest

from moe_operator.errors import UserError
from moe_operator.planning.placement import (
    Device,
    Placement,
    balance,
    device_loads,
    placement_stats,
    round_robin,
    static_placement,
    to_placement_json,
)


def zipf_loads(num_layers, num_experts, exponent, seed):
    """Tokens per expert with Zipf-distributed popularity, hot experts at random ids in each layer."""
    rng = random.Random(seed)
    layers = []
    for _ in range(num_layers):
        row = [1000.0 / (rank + 1) ** exponent for rank in range(num_experts)]
        rng.shuffle(row)
        layers.append(row)
    return layers


def fleet(fast, slow, slow_speed, slots):
    return [Device(f"fast-{i}", 1.0, slots) for i in range(fast)] + \
        [Device(f"slow-{i}", slow_speed, slots) for i in range(slow)]


@pytest.mark.parametrize("exponent", [0.8, 1.2])
def test_beats_round_robin_on_skewed_loads_and_nears_the_bound(exponent):
    loads = zipf_loads(4, 64, exponent, seed=7)
    devices = fleet(16, 0, 1.0, slots=5)
    ours = placement_stats(balance(loads, devices, 16), loads)
    rr = placement_stats(round_robin(4, 64, devices, 16), loads)
    assert ours.step_time < rr.step_time / 2
    assert ours.max_over_mean < rr.max_over_mean
    assert ours.step_time >= ours.lower_bound * (1 - 1e-9)
    assert ours.gap < 0.05


def test_hottest_expert_gets_the_most_copies():
    loads = [[1.0] * 16]
    loads[0][5] = 40.0
    loads[0][9] = 20.0
    layer = balance(loads, fleet(8, 0, 1.0, slots=4), 8).layers[0]
    assert layer.replicas[5] == max(layer.replicas) > layer.replicas[9] > 1
    assert sum(layer.replicas) == 24


def test_beats_a_speed_blind_balance_on_mixed_speeds():
    loads = zipf_loads(4, 64, 1.0, seed=3)
    devices = fleet(8, 8, 0.5, slots=6)
    blind_devices = [Device(d.name, 1.0, d.slots) for d in devices]
    blind = balance(loads, blind_devices, 16)
    blind = Placement(devices=tuple(devices), num_experts=blind.num_experts, layers=blind.layers)
    ours = balance(loads, devices, 16)
    t_ours, t_blind = placement_stats(ours, loads).step_time, placement_stats(blind, loads).step_time
    assert t_ours < 0.85 * t_blind
    # fast devices carry more tokens than slow ones
    per_device = device_loads(ours, loads)
    fast = sum(sum(row[:8]) for row in per_device)
    slow = sum(sum(row[8:]) for row in per_device)
    assert fast > 1.5 * slow


def _optimum(weights, devices, redundant):
    """Best max device time over every replica split and assignment (tiny problems only)."""
    num_experts, best = len(weights), float("inf")
    for extra in itertools.combinations_with_replacement(range(num_experts), redundant):
        replicas = [1 + extra.count(e) for e in range(num_experts)]
        copies = [(weights[e] / replicas[e], e) for e in range(num_experts) for _ in range(replicas[e])]
        for assign in itertools.product(range(len(devices)), repeat=len(copies)):
            held = [[] for _ in devices]
            for (w, e), d in zip(copies, assign):
                held[d].append((w, e))
            if any(len(h) > dev.slots or len({e for _, e in h}) < len(h) for h, dev in zip(held, devices)):
                continue
            best = min(best, max(sum(w for w, _ in h) / dev.speed for h, dev in zip(held, devices)))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_close_to_the_optimum_on_tiny_problems(seed):
    rng = random.Random(seed)
    weights = [rng.choice([1, 2, 5, 9, 20]) for _ in range(4)]
    devices = [Device("a", 1.0, 3), Device("b", rng.choice([0.5, 1.0]), 2), Device("c", 0.5, 2)]
    ours = placement_stats(balance([weights], devices, 2), [weights]).step_time
    assert ours <= 1.15 * _optimum(weights, devices, 2) + 1e-9


def test_static_placement_spreads_experts_evenly_and_collapses_layers():
    devices = [Device(f"shard-{i}", slots=3) for i in range(4)]
    placement = static_placement(5, 10, devices, 2)
    doc = to_placement_json(placement)
    assert doc["numLayers"] == 5 and doc["numExperts"] == 10
    assert len(doc["layers"]) == 1
    assert sorted(len(held) for held in doc["layers"][0]) == [3, 3, 3, 3]
    assert sorted(e for held in doc["layers"][0] for e in held) == sorted(list(range(10)) + [0, 1])


def test_round_robin_layout():
    devices = [Device(f"d{i}", slots=3) for i in range(3)]
    layer = round_robin(1, 6, devices, 2).layers[0]
    # slots 0-5: experts 0-5 cyclic; the copies of 0 and 1 skip devices that already hold them
    assert [layer.experts_on(d) for d in range(3)] == [[0, 3], [0, 1, 4], [1, 2, 5]]


def test_all_zero_loads_still_place_every_expert():
    placement = balance([[0.0] * 6, [0, 0, 0, 0, 0, 0]], [Device("a", slots=4), Device("b", slots=4)], 2)
    for layer in placement.layers:
        assert set(layer.slot_expert) == set(range(6)) and len(layer.slot_expert) == 8


@pytest.mark.parametrize(
    "loads, devices, redundant, kwargs, message",
    [
        ([], [Device("a", slots=2)], 0, {}, "at least one layer"),
        ([[1, 2], [3]], [Device("a", slots=2)], 0, {}, "every layer must list 2 experts"),
        ([[1, -2]], [Device("a", slots=2)], 0, {}, "finite and >= 0"),
        ([[1, float("nan")]], [Device("a", slots=2)], 0, {}, "finite"),
        ([["x", 1]], [Device("a", slots=2)], 0, {}, "list of numbers"),
        ([[1, 2]], [], 0, {}, "at least one device"),
        ([[1, 2]], [Device("a", 0.0, 2)], 0, {}, "speeds must be finite numbers > 0"),
        ([[1, 2]], [Device("a", slots=1), Device("a", slots=1)], 0, {}, "used twice"),
        ([[1, 2]], [Device("a", slots=-1)], 0, {}, "slots must be an integer"),
        ([[1, 2]], [Device("a", slots=2)], 1, {}, "need 3 slots"),
        ([[1, 2]], [Device("a", slots=5)], -1, {}, "redundant slots must be an integer >= 0"),
        ([[1, 2, 3]], [Device("a", slots=5, node=0), Device("b", slots=5, node=1)], 0, {"num_groups": 2},
         "cannot be split into 2 equal groups"),
        ([[1, 2]], [Device("a", slots=2)], 0, {"node_of_device": [0, 1]}, "names 2 nodes for 1 devices"),
    ],
)
def test_bad_input_is_a_user_error(loads, devices, redundant, kwargs, message):
    with pytest.raises(UserError, match=message):
        balance(loads, devices, redundant, **kwargs)
