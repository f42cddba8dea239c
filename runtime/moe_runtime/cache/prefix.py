"""PrefixCache: longest cached prefix of a prompt, in whole blocks, from memory then disk."""
from __future__ import annotations

import hashlib

from .blocks import Block, Spec
from .disk import DiskTier
from .memory import MemoryTier


def block_keys(fingerprint: str, tokens: list[int], block_tokens: int) -> list[str]:
    """Chained hash per full block: key_i = sha256(key_{i-1} | block_i tokens), seeded with the model fingerprint,
    so a key identifies the model and the entire prefix up to the end of block i."""
    keys, prev = [], hashlib.sha256(f"moe-prefix-v1|{fingerprint}|{block_tokens}".encode()).hexdigest()
    for i in range(len(tokens) // block_tokens):
        chunk = tokens[i * block_tokens:(i + 1) * block_tokens]
        prev = hashlib.sha256((prev + "|" + ",".join(map(str, chunk))).encode()).hexdigest()
        keys.append(prev)
    return keys


class PrefixCache:
    def __init__(self, fingerprint: str, block_tokens: int = 64, memory_bytes: int = 256 * 2**20,
                 disk_dir: str | None = None, disk_bytes: int = 0):
        self.fingerprint = fingerprint
        self.block_tokens = block_tokens
        self.memory = MemoryTier(memory_bytes)
        self.disk = DiskTier(disk_dir, fingerprint, disk_bytes) if disk_dir else None
        self.hits = {"memory": 0, "disk": 0}  # blocks served per tier

    def set_block_spec(self, spec: Spec) -> None:
        """The dtypes and shapes of this model's blocks (``MoEForCausalLM.kv_block_spec``): a disk block that has
        others is rejected instead of reaching the model's KV cache."""
        if self.disk is not None:
            self.disk.spec = spec

    def lookup(self, tokens: list[int]) -> tuple[list[str], list[Block]]:
        """Keys of all full blocks of ``tokens`` and the cached blocks of the longest cached prefix; at least the
        last prompt token is always left to compute (its logits start generation)."""
        keys = block_keys(self.fingerprint, tokens, self.block_tokens)
        usable = (len(tokens) - 1) // self.block_tokens
        blocks: list[Block] = []
        for key in keys[:usable]:
            b = self.memory.get(key)
            if b is not None:
                self.hits["memory"] += 1
            elif self.disk is not None and (b := self.disk.get(key)) is not None:
                self.hits["disk"] += 1
                self.memory.put(key, b)
            if b is None:
                break
            blocks.append(b)
        return keys, blocks

    def store(self, key: str, block: Block) -> None:
        self.memory.put(key, block)
        if self.disk is not None:
            self.disk.put(key, block)

    def has(self, key: str) -> bool:
        return key in self.memory or (self.disk is not None and self.disk.has(key))

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait for the disk tier's queued writes (a clean shutdown keeps what it computed)."""
        return self.disk.drain(timeout_s) if self.disk is not None else True

    def bytes(self) -> dict[str, int]:
        return {"memory": self.memory.bytes, "disk": self.disk.bytes if self.disk else 0}
