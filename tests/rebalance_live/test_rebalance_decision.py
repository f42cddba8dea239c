"""planning/rebalance.should_rebalance: apply only when the step gets shorter by min_gain, never inside the
cooldown, never without traffic; imbalance before/after measured under the window's loads."""
from __future__ import annotations

import pytest

from moe_operator.errors import UserError
from moe_operator.planning.placement import Device, balance, placement_stats, to_placement_json
from moe_operator.planning.rebalance import placement_from_json, should_rebalance

DEVICES = [Device(f"shard-{i}", speed=1.0, slots=6) for i in range(2)]
SPLIT = {"numLayers": 2, "numExperts": 8,
         "shards": [{"name": "shard-0", "device": "cpu", "rayResources": {}},
                    {"name": "shard-1", "device": "cpu", "rayResources": {}}],
         "layers": [[[0, 1, 2, 3], [4, 5, 6, 7]]]}
SKEWED = [[500, 400, 300, 200, 10, 10, 10, 10], [900, 10, 10, 10, 10, 10, 10, 10]]
EVEN = [[100] * 8, [100] * 8]


def decide(loads=SKEWED, current=SPLIT, devices=DEVICES, **kw):
    args = dict(redundant_slots=2, min_gain=0.1, last_applied_at=None, cooldown_s=300, now=1000.0)
    args.update(kw)
    return should_rebalance(loads, current, devices, **args)


def test_skewed_loads_apply_a_better_placement():
    d = decide()
    assert d.apply and d.placement is not None
    assert d.imbalance_after < d.imbalance_before
    # the figures are those of placement_stats under the same loads, over the ideal step
    ideal = sum(map(sum, SKEWED)) / 2
    before = placement_stats(placement_from_json(SPLIT, DEVICES), SKEWED).step_time / ideal
    after = placement_stats(placement_from_json(d.placement, DEVICES), SKEWED).step_time / ideal
    assert d.imbalance_before == pytest.approx(before) and d.imbalance_after == pytest.approx(after)
    assert d.gain == pytest.approx(1 - after / before)
    assert d.imbalance_before > 1.5  # layer 0: 1400 vs 40 tokens
    # the new placement holds every expert in every layer and E + redundant slots per layer
    layers = d.placement["layers"] * (2 if len(d.placement["layers"]) == 1 else 1)
    for layer in layers:
        assert {e for s in layer for e in s} == set(range(8))
        assert sum(map(len, layer)) == 10


def test_gain_below_threshold_does_not_apply():
    d = decide(loads=EVEN)
    assert not d.apply and d.imbalance_before == pytest.approx(1.0) and d.gain < 0.1
    d2 = decide(min_gain=0.99)
    assert not d2.apply and "below the threshold" in d2.reason and d2.gain > 0.1


def test_cooldown_blocks_then_expires():
    d = decide(last_applied_at=900.0, cooldown_s=300, now=1000.0)
    assert not d.apply and d.placement is None and "cooldown: 200s left" in d.reason
    assert d.imbalance_before == d.imbalance_after > 1.5
    assert decide(last_applied_at=600.0, cooldown_s=300, now=1000.0).apply


def test_no_traffic_and_already_balanced():
    d = decide(loads=[[0] * 8, [0] * 8])
    assert not d.apply and "no tokens" in d.reason
    balanced = to_placement_json(balance(SKEWED, DEVICES, 2))
    d2 = decide(current=balanced, min_gain=0.0)
    assert not d2.apply and "already" in d2.reason and d2.gain == pytest.approx(0.0)


def test_speed_aware_imbalance():
    """Even tokens on a 1.0 and a 0.5 device: the slow device is the bottleneck, imbalance > 1."""
    devices = [Device("shard-0", speed=1.0, slots=8), Device("shard-1", speed=0.5, slots=8)]
    d = decide(loads=EVEN, devices=devices, min_gain=0.05)
    # before: each device 400 tokens per layer, slowest time 400/0.5 = 800; ideal 800/1.5
    assert d.imbalance_before == pytest.approx(800 / (800 / 1.5))
    assert d.apply and d.imbalance_after < d.imbalance_before


@pytest.mark.parametrize("kw, match", [
    (dict(min_gain=1.0), "min_gain"),
    (dict(min_gain=-0.1), "min_gain"),
    (dict(cooldown_s=-1), "cooldown_s"),
    (dict(loads=[[1] * 8]), "2 layers x 8 experts"),
    (dict(loads=[[1] * 7, [1] * 7]), "2 layers x 8 experts"),
    (dict(loads=[["a"] * 8, [1] * 8]), "2 layers x 8 experts"),
    (dict(loads=[[-1] * 8, [1] * 8]), "non-negative"),
    (dict(current={"numLayers": 2}), "placement JSON"),
    (dict(current={**SPLIT, "shards": [{"name": "x"}, {"name": "shard-1"}]}), "not among the devices"),
    (dict(current={**SPLIT, "layers": [[[0, 1, 2], [4, 5, 6, 7]]]}), "lacks expert 3"),
])
def test_bad_input_is_a_user_error(kw, match):
    with pytest.raises(UserError, match=match):
        decide(**kw)
