"""The rebalance loop's pure parts: window loads from cumulative per-replica counts (resets, new and gone replicas),
devices from a placement, replicas applied."""
from __future__ import annotations

import pytest

from moe_operator.errors import UserError
from moe_operator.planning.expert_window import applied, pool_devices, replica_counts, window_loads
from moe_operator.planning.rebalance import should_rebalance

P = {"numLayers": 2, "numExperts": 4,
     "shards": [{"name": "shard-0", "device": "cpu", "rayResources": {"CPU": 0.5}},
                {"name": "shard-1", "device": "cpu", "rayResources": {"CPU": 0.5}}],
     "layers": [[[0, 1, 2], [3]]]}


def test_window_is_the_per_replica_difference_summed():
    prev = {"a": [[1, 2, 3, 4], [0, 0, 0, 0]], "b": [[10, 0, 0, 0], [5, 5, 5, 5]]}
    cur = {"a": [[2, 4, 6, 8], [1, 0, 0, 0]], "b": [[30, 0, 1, 0], [5, 5, 5, 6]]}
    loads, resets = window_loads(prev, cur, (2, 4))
    assert loads == [[1 + 20, 2, 3 + 1, 4], [1, 0, 0, 1]]
    assert resets == 0


def test_first_look_has_no_window():
    assert window_loads(None, {"a": [[1, 2, 3, 4], [0, 0, 0, 0]]}, (2, 4)) == (None, 0)


def test_a_drop_is_a_restart_whose_whole_count_is_the_window():
    prev = {"a": [[100, 100, 100, 100], [100, 100, 100, 100]]}
    cur = {"a": [[101, 5, 100, 100], [100, 100, 100, 100]]}   # one count went down: the replica restarted
    loads, resets = window_loads(prev, cur, (2, 4))
    assert loads == cur["a"] and resets == 1


def test_new_replica_counts_whole_and_a_gone_one_nothing():
    prev = {"gone": [[9, 9, 9, 9], [9, 9, 9, 9]], "kept": [[1, 1, 1, 1], [1, 1, 1, 1]]}
    cur = {"kept": [[2, 1, 1, 1], [1, 1, 1, 1]], "new": [[0, 0, 7, 0], [0, 3, 0, 0]]}
    loads, resets = window_loads(prev, cur, (2, 4))
    assert loads == [[1, 0, 7, 0], [0, 3, 0, 0]] and resets == 0


def test_wrong_shape_is_a_user_error():
    with pytest.raises(UserError, match="2 x 4"):
        window_loads(None, {"a": [[1, 2, 3]]}, (2, 4))


def test_replica_counts_reads_the_contract_and_refuses_garbage():
    doc = {
        "replicas": [
            {"replica": "r1", "placementId": "initial", "expertTokens": [[1, 2], [3, 4]], "lastReportAge": 0.2}
        ]
    }
    assert replica_counts(doc) == {"r1": [[1.0, 2.0], [3.0, 4.0]]}
    with pytest.raises(UserError, match="replica 0"):
        replica_counts({"replicas": [{"replica": "r1"}]})
    with pytest.raises(UserError, match="non-negative"):
        replica_counts({"replicas": [{"replica": "r1", "expertTokens": [[-1]]}]})


def test_devices_keep_shard_identity_and_make_room():
    devs = pool_devices(P, 2.5, redundant_slots=2)
    assert [d.name for d in devs] == ["shard-0", "shard-1"]
    assert all(d.speed == 2.5 and d.device_type == "cpu" and d.ray_resources == {"CPU": 0.5} for d in devs)
    assert [d.slots for d in devs] == [3, 3]   # max(widest shard 3, ceil((4 + 2) / 2) = 3)
    assert [d.slots for d in pool_devices(P, 1.0, redundant_slots=6)] == [5, 5]
    with pytest.raises(UserError, match="no shards"):
        pool_devices({**P, "shards": [], "layers": [[]]}, 1.0, 0)
    with pytest.raises(UserError, match="speed"):
        pool_devices(P, 0.0, 0)


def test_devices_feed_the_decision_and_the_proposal_keeps_shard_names():
    loads = [[90, 5, 3, 2], [90, 5, 3, 2]]   # expert 0 is hot and shares shard-0 with 1 and 2
    d = should_rebalance(loads, P, pool_devices(P, 1.0, 1), redundant_slots=1, min_gain=0.05,
                         last_applied_at=None, cooldown_s=0, now=0.0)
    assert d.apply and d.imbalance_after < d.imbalance_before
    assert d.placement["shards"] == P["shards"]
    assert sum(len(s) for s in d.placement["layers"][0]) == 5    # 4 experts + 1 redundant copy


def test_applied_counts_replicas_on_the_desired_placement():
    doc = {"placementId": "p-2", "replicas": [{"replica": "a", "placementId": "p-2"},
                                              {"replica": "b", "placementId": "p-1"}]}
    assert applied(doc) == (1, 2)
    assert applied({"placementId": "p", "replicas": []}) == (0, 0)


def test_each_decision_says_its_kind():
    devs = pool_devices(P, 1.0, 1)
    args = dict(redundant_slots=1, min_gain=0.05, cooldown_s=100.0, now=1000.0)
    hot = [[90, 5, 3, 2], [90, 5, 3, 2]]
    assert should_rebalance(hot, P, devs, last_applied_at=None, **args).kind == "apply"
    assert should_rebalance([[0] * 4] * 2, P, devs, last_applied_at=None, **args).kind == "no_traffic"
    cool = should_rebalance(hot, P, devs, last_applied_at=950.0, **args)
    assert cool.kind == "cooldown" and not cool.apply and cool.placement is None
    moved = should_rebalance(hot, P, devs, last_applied_at=None, **args).placement
    done = should_rebalance(hot, moved, devs, last_applied_at=None, **args)
    assert done.kind == "balanced" and not done.apply and done.placement is not None
