"""Live rebalancing on real Ray shards: a running TorchEngine moves to new expert placements while requests
stream; every request (including those that span a swap) returns exactly the greedy tokens of the in-process
model, none is dropped or errored, and the shards end up holding exactly the new placement."""
from __future__ import annotations

import asyncio
import time

import pytest

from moe_operator.planning.placement import Device
from moe_operator.planning.rebalance import should_rebalance
from moe_runtime.engine import SamplingParams
from moe_runtime.engine.core import TorchEngine
from moe_runtime.model.load import load_model
from runtime_serving.serving_support import EngineGate, mid_generation

pytestmark = pytest.mark.ray

MAX_TOKENS = 24
CLIENTS = 6
# Skewed traffic: repetitive prompts route most tokens to a few experts.
PROMPTS = [
    "the the the the the the the the the the",
    "hello hello hello hello hello hello",
    "The router scores each expert and keeps the top k.",
    "aaaa aaaa aaaa aaaa aaaa aaaa aaaa",
    "1 2 3 4 5 6 7 8 9 10 11 12",
    "What is the capital of France? The capital of France is",
]


def shards(*names):
    return [{"name": n, "device": "cpu", "rayResources": {}} for n in names]


# The start: 2 shards, uneven (as a placement planned for other traffic would be), no redundant copies.
P0 = {"numLayers": 4, "numExperts": 8, "shards": shards("shard-0", "shard-1"), "layers": [[[0, 1, 2, 3, 4, 5], [6, 7]]]}
# A second move: shard-1 retired, shard-2 and shard-3 started, shard-0 kept with other experts; redundant copies.
P2 = {"numLayers": 4, "numExperts": 8, "shards": shards("shard-0", "shard-2", "shard-3"),
      "layers": [[[0, 1, 2, 3], [4, 5, 0, 1], [6, 7, 2]],
                 [[7, 6, 5], [4, 3, 2], [1, 0, 7]],
                 [[0, 2, 4, 6], [1, 3, 5, 7], [0, 1]],
                 [[0, 1, 2, 3, 4, 5, 6, 7], [3], [4]]]}


def expand(doc):
    return doc["layers"] * doc["numLayers"] if len(doc["layers"]) == 1 else doc["layers"]


@pytest.fixture(scope="module")
def references(tiny):
    from runtime_core.rc_helpers import greedy

    out = {}
    for p in PROMPTS:
        ids = tiny.tokenizer.encode(p)
        out[p] = (ids, greedy(tiny.model, ids, MAX_TOKENS)[0])
    return out


async def client(engine, k, references, stop, results):
    """Send prompts one after another until ``stop`` is set; record (prompt, tokens, finish, error, submitted at,
    last token at): a request submitted before a swap whose last token comes after it was in flight across it."""
    i = k
    while not stop.is_set():
        prompt = PROMPTS[i % len(PROMPTS)]
        i += 1
        ids, _ = references[prompt]
        submitted = time.monotonic()
        stream = await engine.generate(ids, SamplingParams(max_tokens=MAX_TOKENS), f"c{k}-{i}")
        toks, times, ev = [], [], None
        async for ev in stream:
            if ev.token_id is not None:
                toks.append(ev.token_id)
                times.append(time.monotonic())
        results.append((prompt, toks, ev.finish_reason, ev.error, submitted, times[-1]))


async def until(what: str, cond, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        await asyncio.sleep(0.01)


async def move_mid_generation(engine, gate: EngineGate, placement) -> dict:
    """Apply ``placement`` while a request is mid-generation, by construction rather than by luck: the worker is
    held at a decode step in which some sequence has tokens behind it and at least two ahead, the move is posted,
    and the step goes on once the move is staged; the swap, queued for between this step and the next, then
    lands while that sequence is still running."""
    gate.hold()
    assert await asyncio.to_thread(gate.held.wait, 120), "no decode step with a request mid-generation in 120 s"
    task = asyncio.ensure_future(engine.apply_placement(placement))
    await until("the move staged", lambda: engine._between or task.done())
    gate.release()
    info = await task
    info["at"] = engine.model.backend.swapped_at
    return info


@pytest.mark.timing_sensitive
def test_requests_spanning_rebalances_are_unchanged(ray_local, tiny_dir, tiny, references):
    lm = load_model(tiny_dir, placement=P0)
    engine = TorchEngine(lm, model_name="tiny-moe", max_batch_size=8)
    backend = lm.model.backend
    devices = [Device("shard-0", slots=6), Device("shard-1", slots=6)]

    async def main():
        await engine.start()
        stop, results = asyncio.Event(), []
        tasks = [asyncio.create_task(client(engine, k, references, stop, results)) for k in range(CLIENTS)]
        try:
            with EngineGate(engine, "_decode", when=mid_generation) as gate:
                await until("a window of traffic on P0", lambda: len(results) >= 2 * CLIENTS)
                loads = engine.expert_load()
                decision = should_rebalance(loads, P0, devices, redundant_slots=4, min_gain=0.1,
                                            last_applied_at=None, cooldown_s=60, now=0.0)
                swaps = []
                if decision.apply:
                    swaps.append(await move_mid_generation(engine, gate, decision.placement))
                n = len(results)
                await until("traffic on the new placement", lambda: len(results) >= n + CLIENTS)
                swaps.append(await move_mid_generation(engine, gate, P2))
                n = len(results)
                await until("traffic on P2", lambda: len(results) >= n + CLIENTS)
                after = engine.expert_load()
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            held = ray_local.get([a.held.remote() for a in backend.actors])
            await engine.stop()
        return loads, decision, swaps, results, held, after

    loads, decision, swaps, results, held, after = asyncio.run(main())

    # the skewed window is measured and the balanced placement is better under it
    assert sum(map(sum, loads)) > 0 and len(loads) == 4 and len(loads[0]) == 8
    assert decision.apply, decision.reason
    assert decision.imbalance_after < decision.imbalance_before
    assert len(swaps) == 2 and swaps[0]["loaded"] > 0 and swaps[1]["loaded"] > 0 and swaps[1]["freed"] > 0
    # no request dropped or errored, and each one's tokens are the in-process greedy tokens
    assert len(results) >= 2 * CLIENTS
    for prompt, toks, reason, error, _, _ in results:
        assert reason in ("length", "stop") and error is None
        assert toks == references[prompt][1][:len(toks)] and (reason == "stop" or len(toks) == MAX_TOKENS)
    # some requests were in flight across each swap (submitted before it, last token after it)
    for s in swaps:
        spanning = [r for r in results if r[4] < s["at"] < r[5]]
        assert spanning, f"no request spanned the swap at {s['at']}"
    # the shards hold exactly the last placement; the retired shard is gone; counters moved on the new map
    assert len(held) == 3
    for layer, want in zip(range(4), expand(P2)):
        assert [h[layer] for h in held] == [sorted(x) for x in want]
    assert backend.placement.shards[1].name == "shard-2"
    assert sum(map(sum, after)) > 0


def test_apply_placement_rejects_bad_input(ray_local, tiny_dir, tiny):
    from runtime_core.rc_helpers import greedy
    async def main():
        local = TorchEngine(tiny, model_name="tiny-moe")
        with pytest.raises(ValueError, match="in-process"):
            await local.apply_placement(P0)
        lm = load_model(tiny_dir, placement=P0)
        engine = TorchEngine(lm, model_name="tiny-moe")
        try:
            bad = {**P0, "layers": [[[0, 1, 2], [4, 5, 6, 7]]]}
            with pytest.raises(ValueError, match="missing \\[3\\]"):
                await engine.apply_placement(bad)
            with pytest.raises(ValueError, match="8 experts but the model|4 MoE layers x 6"):
                await engine.apply_placement({**P0, "numExperts": 6, "layers": [[[0, 1, 2], [3, 4, 5]]]})
            # the engine still serves on P0 after the refusals (not started: the swap would run directly)
            assert [s.name for s in lm.model.backend.placement.shards] == ["shard-0", "shard-1"]
            info = await engine.apply_placement(P0)  # same placement: nothing to load or free
            assert info["loaded"] == 0 and info["freed"] == 0
            # a move whose new shard cannot start: what was loaded into shard-0 is freed, the old map still serves
            failing = {**P0, "shards": shards("shard-0", "shard-9"), "layers": [[[0, 1, 2, 3, 4, 5, 6], [6, 7]]]}
            failing["shards"][1]["device"] = "no-such-device"
            with pytest.raises(Exception, match="no-such-device"):
                await engine.apply_placement(failing)
            backend = lm.model.backend
            assert [s.name for s in backend.placement.shards] == ["shard-0", "shard-1"]
            held = ray_local.get([a.held.remote() for a in backend.actors])
            assert [h[0] for h in held] == [[0, 1, 2, 3, 4, 5], [6, 7]]
            ids = tiny.tokenizer.encode("Still serving on the old map.")
            assert greedy(lm.model, ids, 6)[0] == greedy(tiny.model, ids, 6)[0]
        finally:
            lm.model.backend.close()

    asyncio.run(main())
