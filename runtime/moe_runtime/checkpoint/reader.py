"""Reads Hugging Face checkpoints: config.json + safetensors (one file or a sharded index), lazily by tensor name."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .errors import CheckpointError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def _read_header(path: Path) -> dict[str, Any]:
    """Parse a safetensors header and check that every tensor's byte range lies inside the file."""
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError("safetensors file is truncated (no header)", file=str(path))
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise CheckpointError(f"safetensors header claims {n} bytes but file has {size}", file=str(path))
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"safetensors header is not JSON: {e}", file=str(path)) from None
    data = size - 8 - n
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        end = meta["data_offsets"][1]
        if end > data:
            raise CheckpointError(
                f"safetensors file is truncated: tensor needs bytes up to {end}, file holds {data} data bytes",
                file=str(path), tensor=name,
            )
    return header


class CheckpointReader:
    """Tensor name -> file map over a checkpoint directory; ``get`` checks shapes against what config.json implies."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise CheckpointError("checkpoint directory does not exist", file=str(self.dir))
        cfg = self.dir / "config.json"
        if not cfg.is_file():
            raise CheckpointError("config.json is missing", file=str(cfg))
        try:
            self.config: dict[str, Any] = json.loads(cfg.read_text())
        except ValueError as e:
            raise CheckpointError(f"config.json is not valid JSON: {e}", file=str(cfg)) from None
        self.where: dict[str, Path] = {}
        index = self.dir / INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"bad sharded index: {e}", file=str(index)) from None
            files = sorted(set(weight_map.values()))
            for fname in files:
                p = self.dir / fname
                if not p.is_file():
                    first = next(k for k, v in weight_map.items() if v == fname)
                    raise CheckpointError("shard listed in the index is missing", file=str(p), tensor=first)
            headers = {f: _read_header(self.dir / f) for f in files}
            for name, fname in weight_map.items():
                if name not in headers[fname]:
                    raise CheckpointError(
                        "index names a tensor the shard does not hold", file=str(self.dir / fname), tensor=name
                    )
                self.where[name] = self.dir / fname
        else:
            files = sorted(self.dir.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"no {SINGLE_NAME} or {INDEX_NAME} found", file=str(self.dir / SINGLE_NAME))
            for p in files:
                for name in _read_header(p):
                    if name != "__metadata__":
                        self.where[name] = p
        self._handles: dict[Path, Any] = {}

    def has(self, name: str) -> bool:
        return name in self.where

    def files(self) -> list[Path]:
        return sorted(set(self.where.values()))

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Load one tensor; a missing tensor or a shape that disagrees with config.json is a CheckpointError."""
        path = self.where.get(name)
        if path is None:
            expected = self.files()[0] if len(self.files()) == 1 else self.dir / INDEX_NAME
            raise CheckpointError("tensor is missing from the checkpoint", file=str(expected), tensor=name)
        handle = self._handles.get(path)
        if handle is None:
            try:
                handle = self._handles[path] = safe_open(str(path), framework="pt")
            except Exception as e:  # safetensors raises its own error types
                raise CheckpointError(f"cannot open safetensors file: {e}", file=str(path), tensor=name) from None
        try:
            t = handle.get_tensor(name)
        except Exception as e:
            raise CheckpointError(f"cannot read tensor: {e}", file=str(path), tensor=name) from None
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise CheckpointError(
                f"shape {tuple(t.shape)} disagrees with config.json, which implies {tuple(shape)}",
                file=str(path), tensor=name,
            )
        return t
