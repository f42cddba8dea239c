"""Request traces: Azure LLM inference CSV and Mooncake JSONL -> arrays of requests.

A Trace holds, per request, the arrival time (s from the first request, divided by ``speedup``), prompt
tokens computed (cache misses), cached prompt tokens and generated tokens. Mooncake's ``hash_ids`` name
512-token prompt blocks; a request's leading blocks already seen earlier are prefix-cache hits
(unlimited cache). Azure has no cache information: a fixed ``cache_hit_ratio`` may be applied instead.

``prompt``/``cached`` assume one fleet-wide unlimited cache: the fluid model's input and the ceiling on any
fleet's hits. Mooncake traces also keep each request's block ids (``blocks``), so that the per-replica model
(``replicas.py``) can give every replica its own cache and let the routing policy decide the hits.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from moe_operator.errors import UserError

MOONCAKE_BLOCK_TOKENS = 512


@dataclass(frozen=True)
class Trace:
    name: str
    arrival_s: np.ndarray      # float64 [n], sorted, first = 0
    prompt: np.ndarray         # float64 [n] prompt tokens computed (cache misses)
    cached: np.ndarray         # float64 [n] prompt tokens served from the prefix cache
    output: np.ndarray         # float64 [n] generated tokens
    # per request (trace order): the ids of its prompt's blocks of ``block_tokens`` tokens, the last one possibly
    # partial; ids are chained (id k names the whole prefix up to block k, as Mooncake's hash_ids and our block
    # hashes are). None: the trace records no blocks (Azure, synthetic).
    blocks: tuple[tuple[int, ...], ...] | None = field(default=None, repr=False, compare=False)
    block_tokens: int = MOONCAKE_BLOCK_TOKENS

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0

    @property
    def total_tokens(self) -> float:
        return float(self.prompt.sum() + self.cached.sum() + self.output.sum())

    @property
    def cache_hit_ratio(self) -> float:
        total = float(self.prompt.sum() + self.cached.sum())
        return float(self.cached.sum()) / total if total else 0.0


def _finish(name: str, t, prompt, cached, output, speedup: float, blocks: list | None = None) -> Trace:
    if speedup <= 0:
        raise UserError(f"--speedup must be > 0, got {speedup}")
    if not t:
        raise UserError(f"{name}: trace has no requests")
    t = np.asarray(t, dtype=float)
    order = np.argsort(t, kind="stable")
    t = (t[order] - t[order][0]) / speedup
    arrays = [np.asarray(a, dtype=float)[order] for a in (prompt, cached, output)]
    kept = tuple(blocks[k] for k in order.tolist()) if blocks is not None and any(blocks) else None
    return Trace(name, t, *arrays, blocks=kept)


def _parse_azure_time(text: str, path: Path, line: int) -> float:
    s = text.strip()
    if "." in s:  # 7-digit fractions: datetime accepts at most 6
        head, frac = s.split(".", 1)
        s = f"{head}.{frac[:6]}"
    try:
        return datetime.fromisoformat(s).timestamp()
    except ValueError:
        raise UserError(f"{path}:{line}: TIMESTAMP {text!r} is not a date-time like 2023-11-16 18:17:03.98") from None


def load_azure_csv(path: Path, speedup: float = 1.0, cache_hit_ratio: float = 0.0) -> Trace:
    """Azure LLM inference trace: columns TIMESTAMP, ContextTokens, GeneratedTokens."""
    t, prompt, cached, output = [], [], [], []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        need = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise UserError(f"{path}: expected CSV columns {sorted(need)}, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                ctx, gen = float(row["ContextTokens"]), float(row["GeneratedTokens"])
            except (TypeError, ValueError):
                raise UserError(f"{path}:{line}: ContextTokens/GeneratedTokens must be numbers") from None
            if not (math.isfinite(ctx) and math.isfinite(gen)):
                raise UserError(f"{path}:{line}: token counts must be finite numbers")
            if ctx < 0 or gen < 0:
                raise UserError(f"{path}:{line}: token counts must be >= 0")
            t.append(_parse_azure_time(row["TIMESTAMP"] or "", path, line))
            prompt.append(ctx * (1 - cache_hit_ratio))
            cached.append(ctx * cache_hit_ratio)
            output.append(gen)
    return _finish(path.name, t, prompt, cached, output, speedup)


def load_mooncake_jsonl(path: Path, speedup: float = 1.0) -> Trace:
    """Mooncake trace: one JSON object a line with timestamp (ms), input_length, output_length, hash_ids."""
    t, prompt, output, ids = [], [], [], []
    seen: set[int] = set()
    with path.open() as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                r = json.loads(text)
                ts, n_in, n_out = float(r["timestamp"]), float(r["input_length"]), float(r["output_length"])
                blocks = tuple(int(b) for b in r.get("hash_ids", []))
            except (ValueError, TypeError, KeyError) as exc:
                raise UserError(
                    f"{path}:{line}: expected JSON with timestamp, input_length, output_length, hash_ids ({exc})"
                ) from None
            if not all(math.isfinite(x) for x in (ts, n_in, n_out)):
                raise UserError(f"{path}:{line}: timestamp and lengths must be finite numbers")
            if n_in < 0 or n_out < 0:
                raise UserError(f"{path}:{line}: lengths must be >= 0")
            t.append(ts / 1000.0)
            prompt.append(n_in)
            output.append(n_out)
            ids.append(blocks)
    cached = [0.0] * len(t)
    for k in sorted(range(len(t)), key=t.__getitem__):   # in arrival order, whatever the file's order
        hits = 0
        for b in ids[k]:
            if b not in seen:
                break
            hits += 1
        seen.update(ids[k])
        cached[k] = min(prompt[k], hits * MOONCAKE_BLOCK_TOKENS)
        prompt[k] -= cached[k]
    return _finish(path.name, t, prompt, cached, output, speedup, ids)


def load_trace(path: str | Path, speedup: float = 1.0, cache_hit_ratio: float = 0.0) -> Trace:
    """Load a trace by extension (.csv = Azure, .jsonl/.json = Mooncake); UserError on anything malformed."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"trace {p} does not exist")
    if p.suffix == ".csv":
        return load_azure_csv(p, speedup, cache_hit_ratio)
    if p.suffix in (".jsonl", ".json"):
        return load_mooncake_jsonl(p, speedup)
    raise UserError(f"trace {p}: unknown format; use an Azure .csv or a Mooncake .jsonl")
