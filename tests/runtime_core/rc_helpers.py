"""Helpers for the runtime-core tests (a uniquely named module: ``conftest`` is ambiguous across test dirs)."""
from __future__ import annotations

import asyncio

import torch


async def settled_stats(engine, tries: int = 250):
    """The engine's stats once no sequence is running: the worker updates its books right after emitting the
    final events, so a test that has read every final event may still see them running for a moment."""
    for _ in range(tries):
        if engine.stats().running == 0:
            break
        await asyncio.sleep(0.02)
    return engine.stats()


def greedy(model, prompt, n):
    """n greedy tokens and the logits that chose them [n, vocab] (prefill, then one token per step)."""
    kv = model.new_kv()
    logits = model([prompt], [kv])
    out, rows = [], []
    for _ in range(n):
        rows.append(logits[0])
        t = int(logits[0].argmax())
        out.append(t)
        logits = model([[t]], [kv])
    return out, torch.stack(rows)
