"""Helpers for the runtime-core tests (a uniquely named module: ``conftest`` is ambiguous across test dirs)."""
from __future__ import annotations

import torch


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
