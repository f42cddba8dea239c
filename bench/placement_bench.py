"""Benchmark of the expert balancer (moe_operator.planning.placement), figures side by side in one run.

    .venv/bin/python bench/placement_bench.py            # DeepSeek-V3 size: 58 layers x 256 experts, 64 devices
    .venv/bin/python bench/placement_bench.py --quick    # 8 layers, for a smoke run
    .venv/bin/python bench/placement_bench.py --tiny     # also: loads recorded from the tiny model (needs torch)

Loads: Zipf popularity (expert of rank k gets 1 / k**s of the tokens), hot experts at random ids in each layer
(seeded). Time is the MoE part of one step: per layer the slowest device (load / speed), summed over layers.
The lower bound per layer is max(total load / total speed, hottest copy after water-filling / fastest speed).
"""
from __future__ import annotations

import argparse
import random
import time

from moe_operator.planning.placement import Device, Placement, balance, placement_stats, round_robin


def zipf_loads(num_layers: int, num_experts: int, exponent: float, seed: int) -> list[list[float]]:
    rng = random.Random(seed)
    layers = []
    for _ in range(num_layers):
        row = [1e6 / (rank + 1) ** exponent for rank in range(num_experts)]
        rng.shuffle(row)
        layers.append(row)
    return layers


def fleet(fast: int, slow: int, slow_speed: float, slots: int) -> list[Device]:
    return [Device(f"fast-{i}", 1.0, slots, node=i // 8) for i in range(fast)] + \
        [Device(f"slow-{i}", slow_speed, slots, node=(fast + i) // 8) for i in range(slow)]


def timed(fn, repeat: int):
    """(result, best wall seconds, best CPU seconds) over ``repeat`` runs."""
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return result, min(walls), min(cpus)


def speed_blind(loads, devices, redundant) -> Placement:
    """The same balancer told every device is equally fast, judged with the real speeds."""
    blind = balance(loads, [Device(d.name, 1.0, d.slots, d.node) for d in devices], redundant)
    return Placement(devices=tuple(devices), num_experts=blind.num_experts, layers=blind.layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=58)
    parser.add_argument("--experts", type=int, default=256)
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--redundant", type=int, default=32)
    parser.add_argument("--slow-speed", type=float, default=0.6)
    parser.add_argument("--repeat", type=int, default=3, help="timing runs (best is reported)")
    parser.add_argument("--quick", action="store_true", help="8 layers, 1 timing run")
    parser.add_argument("--tiny", action="store_true",
                        help="also balance loads recorded from the builtin tiny model over this repo's docs")
    args = parser.parse_args()
    if args.quick:
        args.layers, args.repeat = 8, 1
    L, E, D, R = args.layers, args.experts, args.devices, args.redundant
    slots = -(-(E + R) // D)
    print(f"problem: {L} layers x {E} experts, {R} redundant slots, {D} devices x {slots} slots")

    uniform = fleet(D, 0, 1.0, slots)
    print("\n## Zipf loads, identical devices: max/mean device load, gap of max device time to the lower bound")
    print(f"{'zipf s':>6} | {'round-robin max/mean':>20} {'gap':>8} | {'balanced max/mean':>17} {'gap':>7} | "
          f"{'bound: total/speed':>18} {'hottest copy':>12}")
    for s in (0.6, 1.0, 1.4):
        loads = zipf_loads(L, E, s, seed=1)
        rr = placement_stats(round_robin(L, E, uniform, R), loads)
        ours = placement_stats(balance(loads, uniform, R), loads)
        fluid = sum(sum(row) for row in loads) / D
        hot = _hottest_bound(loads, uniform, R)
        print(f"{s:>6} | {rr.max_over_mean:>20.3f} {100 * rr.gap:>7.1f}% | {ours.max_over_mean:>17.3f} "
              f"{100 * ours.gap:>6.2f}% | {fluid / ours.lower_bound:>18.3f} {hot / ours.lower_bound:>12.3f}")
    print("(bound columns: each term summed over layers, as a fraction of the combined bound)")

    mixed = fleet(D // 2, D - D // 2, args.slow_speed, slots)
    print(f"\n## Zipf loads, {D // 2} devices at speed 1 + {D - D // 2} at {args.slow_speed}: max device time")
    print(f"{'zipf s':>6} | {'round-robin':>12} | {'speed-blind':>12} | {'balanced':>12} | {'blind/ours':>10} | "
          f"{'gap to bound':>12}")
    for s in (0.6, 1.0, 1.4):
        loads = zipf_loads(L, E, s, seed=1)
        rr = placement_stats(round_robin(L, E, mixed, R), loads)
        blind = placement_stats(speed_blind(loads, mixed, R), loads)
        ours = placement_stats(balance(loads, mixed, R), loads)
        print(f"{s:>6} | {rr.step_time:>12.4g} | {blind.step_time:>12.4g} | {ours.step_time:>12.4g} | "
              f"{blind.step_time / ours.step_time:>10.2f} | {100 * ours.gap:>11.1f}%")

    print(f"\n## time to place {L} layers x {E} experts, {R} redundant slots, {D} devices "
          f"(best of {args.repeat}; Zipf s=1.0)")
    loads = zipf_loads(L, E, 1.0, seed=2)
    for label, devices in (("identical devices", uniform), (f"mixed (x{args.slow_speed})", mixed)):
        _, wall, cpu = timed(lambda: balance(loads, devices, R), args.repeat)
        print(f"{label:>22}: {wall:.3f} s wall, {cpu:.3f} s CPU")
    _, wall, cpu = timed(lambda: balance(loads, uniform, R, num_groups=8), args.repeat)
    print(f"{'8 groups on 8 nodes':>22}: {wall:.3f} s wall, {cpu:.3f} s CPU")
    if args.tiny:
        tiny_section()


def tiny_loads(max_prompts: int = 32, new_tokens: int = 8) -> tuple[list[list[float]], int, int]:
    """Tokens routed per (MoE layer, expert) by the builtin tiny model (random weights, real router code)
    prefilling each paragraph of this repository's docs and decoding ``new_tokens`` greedily.
    Returns (loads, prompts, tokens)."""
    from pathlib import Path

    from moe_runtime.checkpoint.tiny import ensure_tiny_checkpoint
    from moe_runtime.model.load import load_model

    root = Path(__file__).resolve().parent.parent
    paragraphs = []
    for doc in sorted((root / "docs").glob("*.md")) + [root / "README.md"]:
        if doc.is_file():
            paragraphs += [p.strip() for p in doc.read_text().split("\n\n") if len(p.strip()) > 80]
    paragraphs = paragraphs[:max_prompts]
    loaded = load_model(ensure_tiny_checkpoint())
    model, tokens = loaded.model, 0
    for text in paragraphs:
        ids = loaded.tokenizer.encode(text)[:256]
        kv = model.new_kv()
        logits = model.forward([ids], [kv])
        tokens += len(ids)
        for _ in range(new_tokens):
            nxt = int(logits[0].argmax())
            logits = model.forward([[nxt]], [kv])
            tokens += 1
    return [[float(x) for x in row] for row in model.expert_counts.tolist()], len(paragraphs), tokens


def tiny_section() -> None:
    loads, prompts, tokens = tiny_loads()
    layers, experts = len(loads), len(loads[0])
    print(f"\n## loads recorded from the tiny model ({layers} MoE layers x {experts} experts, top-2): "
          f"{prompts} prompts, {tokens} tokens")
    for row in loads:
        print("   tokens per expert:", " ".join(f"{int(x):>5}" for x in row))
    for label, devices, redundant in (
        ("4 devices x 3 slots, 4 redundant", fleet(4, 0, 1.0, 3), 4),
        ("2 at 1.0 + 2 at 0.5, 3 slots, 4 redundant", fleet(2, 2, 0.5, 3), 4),
    ):
        rr = placement_stats(round_robin(layers, experts, devices, redundant), loads)
        blind = placement_stats(speed_blind(loads, devices, redundant), loads)
        ours = placement_stats(balance(loads, devices, redundant), loads)
        print(f"{label:>42}: max/mean round-robin {rr.max_over_mean:.3f} -> balanced {ours.max_over_mean:.3f}; "
              f"max device time round-robin {rr.step_time:.0f}, speed-blind {blind.step_time:.0f}, "
              f"balanced {ours.step_time:.0f} (gap to bound {100 * ours.gap:.1f}%)")


def _hottest_bound(loads, devices, redundant) -> float:
    """Sum over layers of the hottest copy after water-filling (the replica split that minimises it)."""
    from moe_operator.planning.placement import _replicate  # the same water-filling the balancer uses

    caps = [d.slots for d in devices]
    total = 0.0
    for row in loads:
        replicas = _replicate(row, [(list(range(len(row))), list(range(len(devices))))], caps, len(row) + redundant)
        total += max(w / r for w, r in zip(row, replicas)) / max(d.speed for d in devices)
    return total


if __name__ == "__main__":
    main()
