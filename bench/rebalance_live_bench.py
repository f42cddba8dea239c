"""Benchmark of live expert rebalancing on the tiny model over real local Ray shards, figures side by side in one run.

    .venv/bin/python bench/rebalance_live_bench.py [--clients 6] [--window 4]

Clients stream skewed (repetitive) prompts without pause. Over a window on an uneven 2-shard placement (6 + 2
experts, as a placement planned for other traffic would be) the
engine's per-expert token counts feed ``should_rebalance`` (2 shards x 6 slots, 4 redundant copies); the decision's
placement is applied live, then a window of the same traffic runs on it. Printed: the imbalance (step time over the
ideal step, under the measured loads) before/after, the tokens each shard carried per window (the measured
per-expert counts split over copies as the runtime splits them), the seconds spent loading and waiting for the step
boundary, the inter-token gap (ms) before, during and after the move, and whether every request matched the in-process
model.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import torch

from moe_operator.planning.placement import Device, device_loads, placement_stats
from moe_operator.planning.rebalance import placement_from_json, should_rebalance
from moe_runtime.checkpoint.tiny import ensure_tiny_checkpoint
from moe_runtime.engine import SamplingParams
from moe_runtime.engine.core import TorchEngine
from moe_runtime.model.load import load_model

PROMPTS = ["the the the the the the the the the the", "hello hello hello hello hello hello",
           "aaaa aaaa aaaa aaaa aaaa aaaa aaaa", "The router scores each expert and keeps the top k."]
P0 = {"numLayers": 4, "numExperts": 8, "layers": [[[0, 1, 2, 3, 4, 5], [6, 7]]],
      "shards": [{"name": f"shard-{i}", "device": "cpu", "rayResources": {}} for i in range(2)]}


def reference(model, ids, n):
    kv = model.new_kv()
    logits, out = model([ids], [kv]), []
    for _ in range(n):
        out.append(int(logits[0].argmax()))
        logits = model([[out[-1]]], [kv])
    return out


async def run(args) -> None:
    import ray

    torch.set_num_threads(1)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tiny_dir = ensure_tiny_checkpoint(Path(tempfile.mkdtemp()) / "tiny-moe")
    ref = load_model(tiny_dir)
    tok = ref.tokenizer
    refs = {p: reference(ref.model, tok.encode(p), args.max_tokens) for p in PROMPTS}
    lm = load_model(tiny_dir, placement=P0)
    engine = TorchEngine(lm, model_name="tiny-moe", max_batch_size=8)
    await engine.start()
    stop, gaps, bad, done = asyncio.Event(), [], [], [0]

    async def client(k):
        i = k
        while not stop.is_set():
            p = PROMPTS[i % len(PROMPTS)]
            i += 1
            stream = await engine.generate(tok.encode(p), SamplingParams(max_tokens=args.max_tokens), f"{k}-{i}")
            toks, last = [], None
            async for ev in stream:
                now = time.monotonic()
                if ev.token_id is not None:
                    toks.append(ev.token_id)
                    if last is not None:
                        gaps.append((now, now - last))
                    last = now
                if ev.finished and (ev.finish_reason not in ("length", "stop") or toks != refs[p][:len(toks)]):
                    bad.append((p, ev.finish_reason, ev.error))
            done[0] += 1

    tasks = [asyncio.create_task(client(k)) for k in range(args.clients)]
    await asyncio.sleep(1.0)
    engine.expert_load()  # start the window after warm-up
    t0 = time.monotonic()
    await asyncio.sleep(args.window)
    loads = engine.expert_load()
    devices = [Device("shard-0", slots=6), Device("shard-1", slots=6)]
    d = should_rebalance(loads, P0, devices, redundant_slots=4, min_gain=0.0, last_applied_at=None,
                         cooldown_s=0, now=0.0)
    t1 = time.monotonic()
    info = await engine.apply_placement(d.placement)
    t2 = time.monotonic()
    await asyncio.sleep(0.5)
    engine.expert_load()
    t3 = time.monotonic()
    await asyncio.sleep(args.window)
    loads_after = engine.expert_load()
    t4 = time.monotonic()
    stop.set()
    await asyncio.gather(*tasks)
    await engine.stop()
    ray.shutdown()

    def gap_ms(a, b):
        xs = [g for t, g in gaps if a <= t < b]
        return (
            f"median {1000 * statistics.median(xs):.1f} ms, p95 {1000 * sorted(xs)[int(0.95 * (len(xs) - 1))]:.1f} "
            f"ms, n={len(xs)}"
            if xs
            else "n=0"
        )

    def shard_tokens(doc, window_loads):
        rows = device_loads(placement_from_json(doc, devices), window_loads)
        return [round(sum(r[s] for r in rows)) for s in range(2)]

    even = {**P0, "layers": [[[0, 1, 2, 3], [4, 5, 6, 7]]]}
    d_even = should_rebalance(loads, even, devices, redundant_slots=4, min_gain=0.0, last_applied_at=None,
                              cooldown_s=0, now=0.0)
    print(f"same loads from the contiguous 4 + 4 split instead: imbalance {d_even.imbalance_before:.3f} -> "
          f"{d_even.imbalance_after:.3f} (gain {d_even.gain:.1%})")
    print(f"decision: apply={d.apply} reason: {d.reason}")
    print(
        f"imbalance (step time / ideal) before {d.imbalance_before:.3f}  after {d.imbalance_after:.3f}  gain "
        f"{d.gain:.1%}"
    )
    after_stats = placement_stats(placement_from_json(d.placement, devices), loads_after).step_time
    ideal_after = sum(map(sum, loads_after)) / 2
    print(f"next window's loads on the new placement: imbalance {after_stats / ideal_after:.3f}")
    print(
        f"tokens per shard, window 1 on P0: {shard_tokens(P0, loads)}; window 2 on new: "
        f"{shard_tokens(d.placement, loads_after)}"
    )
    print(f"apply_placement: loaded {info['loaded']} copies, freed {info['freed']}, load {info['load_s']:.2f} s, "
          f"swap wait {1000 * info['swap_wait_s']:.1f} ms, total {t2 - t1:.2f} s")
    print(f"inter-token gap before: {gap_ms(t0, t1)}")
    print(f"inter-token gap during: {gap_ms(t1, t2)}")
    print(f"inter-token gap after:  {gap_ms(t3, t4)}")
    print(f"requests finished {done[0]}, wrong or failed {len(bad)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=6)
    p.add_argument("--window", type=float, default=4.0, help="seconds of traffic per window")
    p.add_argument("--max-tokens", type=int, default=24)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
