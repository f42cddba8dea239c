"""Memory tier: LRU over blocks with a byte budget."""
from __future__ import annotations

from collections import OrderedDict

from .blocks import Block, block_nbytes


class MemoryTier:
    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.bytes = 0
        self._d: OrderedDict[str, tuple[Block, int]] = OrderedDict()
        self.evictions = 0

    def get(self, key: str) -> Block | None:
        item = self._d.get(key)
        if item is None:
            return None
        self._d.move_to_end(key)
        return item[0]

    def put(self, key: str, block: Block) -> None:
        size = block_nbytes(block)
        if size > self.budget or key in self._d:
            return
        self._d[key] = (block, size)
        self.bytes += size
        while self.bytes > self.budget:
            _, (_, s) = self._d.popitem(last=False)
            self.bytes -= s
            self.evictions += 1

    def __contains__(self, key: str) -> bool:
        return key in self._d

    def __len__(self) -> int:
        return len(self._d)
