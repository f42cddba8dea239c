"""Experts in ExpertShard actors on a real local Ray: logits equal the single-process model within 1e-4 (sums of
the same products in another order) and greedy outputs are identical, for 1, 2 and 4 shards, with and without
redundant copies. Each MoE layer makes at most one call per shard."""
from __future__ import annotations

import pytest
import torch

from runtime_core.rc_helpers import greedy
from moe_runtime.experts.placement import ExpertPlacement, ray_options
from moe_runtime.model.load import load_model

pytestmark = pytest.mark.ray
TOL = 1e-4

PLACEMENTS = {
    "1-shard": [[list(range(8))]],
    "2-shards": [[[0, 1, 2, 3], [4, 5, 6, 7]]],
    "4-shards": [[[0, 1], [2, 3], [4, 5], [6, 7]]],
    "2-shards-redundant": [[[0, 1, 2, 3, 4, 5], [2, 3, 4, 5, 6, 7]]],
    "4-shards-redundant-per-layer": [
        [[0, 1, 7], [2, 3, 0], [4, 5, 2], [6, 7, 4]],
        [[0, 1], [2, 3], [4, 5], [6, 7, 0, 1, 2, 3, 4, 5]],
        [[0, 1, 2, 3, 4, 5, 6, 7], [0], [1], [2]],
        [[7, 6], [5, 4, 6], [3, 2, 6], [1, 0, 6]],
    ],
}


def placement(layers):
    n = len(layers[0])
    return {"numLayers": 4, "numExperts": 8, "layers": layers,
            "shards": [{"name": f"shard-{i}", "device": "cpu", "rayResources": {"CPU": 0.25}} for i in range(n)]}


@pytest.fixture(scope="module")
def ray_local():
    from ray_support import start_local_ray

    ray = start_local_ray()
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("name", sorted(PLACEMENTS))
def test_sharded_logits_and_greedy_equal_single_process(ray_local, tiny_dir, tiny, name):
    pl = placement(PLACEMENTS[name])
    lm = load_model(tiny_dir, placement=pl)
    try:
        prompt = tiny.tokenizer.encode("Where does each expert live? The router decides which ones run.")
        ref_out, ref_logits = greedy(tiny.model, prompt, 8)
        calls0 = lm.model.backend.calls
        out, logits = greedy(lm.model, prompt, 8)
        assert out == ref_out
        assert (logits - ref_logits).abs().max().item() <= TOL
        steps, shards = 9, len(pl["shards"])  # prefill + 8 decode steps
        assert lm.model.backend.calls - calls0 <= steps * 4 * shards
    finally:
        lm.model.backend.close()


def test_redundant_copies_split_tokens_between_shards():
    pl = ExpertPlacement.parse(placement(PLACEMENTS["2-shards-redundant"]))
    holders = pl.holders(0)
    assert holders[0] == [0] and holders[3] == [0, 1] and holders[7] == [1]
    from moe_runtime.experts.sharded import ShardedExperts

    fake = ShardedExperts.__new__(ShardedExperts)
    fake._holders = [holders]
    ids = torch.tensor([[3, 0], [3, 7], [3, 4], [3, 4]])
    shard = fake.assign(0, ids).view(4, 2)
    assert shard[:, 0].tolist() == [0, 1, 0, 1]  # expert 3's four tokens alternate between its two copies
    assert shard[0, 1] == 0 and shard[1, 1] == 1 and shard[2:, 1].tolist() == [0, 1]


def test_placement_errors_and_ray_options():
    with pytest.raises(ValueError, match="missing \\[7\\]"):
        ExpertPlacement.parse(placement([[[0, 1, 2, 3], [4, 5, 6]]]))
    with pytest.raises(ValueError, match="numLayers"):
        ExpertPlacement.parse({"numLayers": 4, "numExperts": 8, "shards": [{"name": "a"}], "layers": [[[0]], [[0]]]})
    assert ray_options({"CPU": 0.5, "GPU": 1, "NPU": 1, "pool-h800": 1}) == {
        "num_cpus": 0.5, "num_gpus": 1, "resources": {"NPU": 1, "pool-h800": 1}}


def test_engine_built_from_runtime_config_with_placement(ray_local, tiny_dir, tiny):
    """build_engine(RuntimeConfig) with a placement: the engine's greedy stream equals the in-process model's."""
    import asyncio

    from moe_runtime.config import RuntimeConfig
    from moe_runtime.engine import SamplingParams, build_engine

    cfg = RuntimeConfig(model_name="tiny-moe", model_source=str(tiny_dir), device="cpu",
                        placement=placement(PLACEMENTS["2-shards-redundant"]), cache={"prefix": False})
    prompt = tiny.tokenizer.encode("Each MoE layer sends each shard one call.")
    ref, _ = greedy(tiny.model, prompt, 6)

    async def main():
        engine = build_engine(cfg)
        await engine.start()
        try:
            stream = await engine.generate(prompt, SamplingParams(max_tokens=6), "p")
            return [ev.token_id async for ev in stream if ev.token_id is not None], engine.model.backend.calls
        finally:
            await engine.stop()

    out, calls = asyncio.run(main())
    assert out == ref and calls > 0
