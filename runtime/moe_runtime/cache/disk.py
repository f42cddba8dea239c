"""Disk tier: one file per block in a directory that survives restarts. A file is served only if its magic,
model fingerprint, key and payload checksum all match; anything else is counted and ignored (and a corrupt
file is removed). Oldest files (by mtime) are evicted beyond the byte budget (0 = unbounded)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .blocks import BadBlock, Block, decode_block, encode_block


class DiskTier:
    def __init__(self, directory: str | Path, fingerprint: str, budget_bytes: int = 0):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self.budget = budget_bytes
        self.corrupt = 0
        self.foreign = 0
        self.bytes = sum(p.stat().st_size for p in self.dir.glob("*.kvb"))

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.kvb"

    def get(self, key: str) -> Block | None:
        p = self.path(key)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            return None
        except OSError:
            self.corrupt += 1
            return None
        try:
            block = decode_block(data, self.fingerprint, key)
        except BadBlock as e:
            if e.kind == "foreign":
                self.foreign += 1
            else:
                self.corrupt += 1
                try:
                    p.unlink()
                    self.bytes -= len(data)
                except OSError:
                    pass
            return None
        os.utime(p)  # recently used: evicted last
        return block

    def put(self, key: str, block: Block) -> None:
        p = self.path(key)
        if p.exists():
            return
        data = encode_block(block, self.fingerprint, key)
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, p)  # readers never see a half-written block
        self.bytes += len(data)
        if self.budget and self.bytes > self.budget:
            self._evict()

    def _evict(self) -> None:
        files = sorted(self.dir.glob("*.kvb"), key=lambda q: q.stat().st_mtime)
        for q in files:
            if self.bytes <= self.budget:
                break
            try:
                size = q.stat().st_size
                q.unlink()
                self.bytes -= size
            except OSError:
                pass
