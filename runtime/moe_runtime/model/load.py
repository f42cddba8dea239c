"""load_model: checkpoint directory -> ready MoEForCausalLM (+ config, tokenizer, fingerprint) on a device."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moe_runtime.checkpoint.reader import CheckpointReader
from moe_runtime.checkpoint.tokenizer import ModelTokenizer, load_tokenizer
from moe_runtime.device import resolve_device, resolve_dtype

from .config import MoEConfig
from .decoder import MoEForCausalLM


@dataclass
class LoadedModel:
    model: MoEForCausalLM
    cfg: MoEConfig
    tokenizer: ModelTokenizer | None
    fingerprint: str  # identifies weights + dtype + quantization (prefix-cache keys include it)
    directory: Path


def fingerprint(reader: CheckpointReader, dtype: str, quant: str) -> str:
    """sha256 over config.json, each weight file's name, size and first/last 64 KiB, dtype and quantization."""
    h = hashlib.sha256()
    h.update(json.dumps(reader.config, sort_keys=True).encode())
    for p in reader.files():
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        with p.open("rb") as f:
            h.update(f.read(65536))
            f.seek(max(0, size - 65536))
            h.update(f.read(65536))
    h.update(f"{dtype}:{quant}".encode())
    return h.hexdigest()


def load_model(directory: str | Path, *, device: str = "cpu", dtype: str = "float32", quant: str = "none",
               placement: Any = None, tokenizer: bool = True) -> LoadedModel:
    """placement None keeps every expert in this process; otherwise ExpertShard actors per the placement (Ray)."""
    reader = CheckpointReader(directory)
    cfg = MoEConfig.from_hf(reader.config, source=str(reader.dir / "config.json"))
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if placement is None:
        from moe_runtime.experts.local import LocalExperts

        backend = LocalExperts.load(reader, cfg, dev, dt, quant)
    else:
        from moe_runtime.experts.placement import ExpertPlacement
        from moe_runtime.experts.sharded import ShardedExperts

        pl = placement if isinstance(placement, ExpertPlacement) else ExpertPlacement.parse(placement)
        pl.check_model(cfg.num_moe_layers, cfg.num_experts)
        backend = ShardedExperts(pl, str(reader.dir), dtype, quant)
    model = MoEForCausalLM(cfg, reader, backend, dev, dt, quant).eval()
    tok = load_tokenizer(reader.dir, reader.config) if tokenizer else None
    return LoadedModel(model, cfg, tok, fingerprint(reader, dtype, quant), reader.dir)
