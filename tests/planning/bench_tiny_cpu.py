"""Calibration of the cpu catalog entry: the torch engine's tiny model, CPU time of one torch thread, vs the roofline.

CPU time (time.process_time), not wall time, so other processes on a shared machine inflate it little.
Run: MOE_CACHE_DIR=/tmp/moe-cache .venv/bin/python tests/planning/bench_tiny_cpu.py   (needs torch; ~1-3 minutes)
"""
from __future__ import annotations

import os
import time

import torch

from moe_operator.catalog import Catalog
from moe_operator.planning.capacity import replica_throughput
from moe_operator.planning.model import model_facts
from moe_runtime.checkpoint.tiny import ensure_tiny_checkpoint
from moe_runtime.model.load import load_model

torch.set_num_threads(1)  # a Ray actor with num_cpus=1 runs torch on one thread


def cpu_seconds(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    model = load_model(ensure_tiny_checkpoint(os.environ.get("MOE_CACHE_DIR")), device="cpu", tokenizer=False).model
    facts, cpu = model_facts(None, "tiny"), Catalog.default().get("cpu")
    print("decode: attended tokens per sequence, batch -> measured vs model tokens/s")
    for attended in (256, 1024):
        for b in (1, 4, 8, 16):
            kvs = [model.new_kv() for _ in range(b)]
            for kv in kvs:
                model([[5] * attended], [kv])
            steps = 8
            s = cpu_seconds(lambda: [model([[7]] * b, kvs) for _ in range(steps)]) / steps
            predicted = replica_throughput(facts, cpu, 1, "none", b, 2 * attended).decode_tps
            print(
                f"  attended {attended:5d} B {b:3d}: measured {b / s:6.0f}  model {predicted:6.0f}  model/measured "
                f"{predicted * s / b:5.2f}"
            )
    print("prefill: one prompt of P tokens -> measured vs model tokens/s")
    for p in (256, 1024):
        kv = model.new_kv()
        s = cpu_seconds(lambda: model([[5] * p], [kv]))
        predicted = replica_throughput(facts, cpu, 1, "none", 1, 2 * p).prefill_tps
        print(f"  P {p:5d}: measured {p / s:6.0f}  model {predicted:6.0f}  model/measured {predicted * s / p:5.2f}")


if __name__ == "__main__":
    main()
