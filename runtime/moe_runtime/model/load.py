"""load_model: checkpoint directory -> ready MoEForCausalLM (+ config, tokenizer, fingerprint) on a device."""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import moe_runtime
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
    fingerprint: str  # identifies runtime version + weights + dtype + quantization (prefix-cache keys include it)
    directory: Path


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 * 2**20):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(reader: CheckpointReader, dtype: str, quant: str) -> str:
    """sha256 over the runtime version, config.json, each weight file's name and whole content, dtype and
    quantization: prefix-cache keys (the disk tier's file names) start from it, so blocks are only ever shared by
    replicas that compute the same K/V.

    Whole files, streamed, once per load (``load_model``): sampling the ends missed a checkpoint re-saved with
    different weights in the middle, and size + mtime would differ between two nodes' copies of the same weights
    (no sharing) yet match for a file rewritten in place with its mtime kept (rsync -a, tar). The cost is one read
    of the weights, which the loader reads anyway (so mostly from the page cache); files are hashed in parallel
    (hashlib releases the GIL), so a large sharded checkpoint costs about its read time at disk bandwidth."""
    files = reader.files()
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(files)))) as pool:
        digests = list(pool.map(_file_sha256, files))
    h = hashlib.sha256()
    h.update(f"moe-runtime {moe_runtime.__version__}|".encode())
    h.update(json.dumps(reader.config, sort_keys=True).encode())
    for p, digest in zip(files, digests):
        h.update(f"|{p.name}:{digest}".encode())
    h.update(f"|{dtype}:{quant}".encode())
    return h.hexdigest()


def load_model(directory: str | Path, *, device: str = "cpu", dtype: str = "float32", quant: str = "none",
               placement: Any = None, tokenizer: bool = True) -> LoadedModel:
    """placement None keeps every expert in this process; otherwise ExpertShard actors per the placement (Ray)."""
    reader = CheckpointReader(directory)
    cfg = MoEConfig.from_hf(reader.config, source=str(reader.dir / "config.json"))
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if placement is None:
        from moe_runtime.experts.in_process import InProcessExperts

        backend = InProcessExperts.load(reader, cfg, dev, dt, quant)
    else:
        from moe_runtime.experts.placement import ExpertPlacement
        from moe_runtime.experts.sharded import ShardedExperts

        pl = placement if isinstance(placement, ExpertPlacement) else ExpertPlacement.parse(placement)
        pl.check_model(cfg.num_moe_layers, cfg.num_experts)
        backend = ShardedExperts(pl, str(reader.dir), dtype, quant)
    model = MoEForCausalLM(cfg, reader, backend, dev, dt, quant).eval()
    tok = load_tokenizer(reader.dir, reader.config) if tokenizer else None
    return LoadedModel(model, cfg, tok, fingerprint(reader, dtype, quant), reader.dir)
