"""Per-sequence KV cache: one growable [kv_heads, tokens, head_dim] buffer pair per decoder layer."""
from __future__ import annotations

import torch


class SeqKV:
    """Keys and values of one sequence; capacity doubles as tokens arrive (amortised O(1) append)."""

    def __init__(self, num_layers: int):
        self.k: list[torch.Tensor | None] = [None] * num_layers
        self.v: list[torch.Tensor | None] = [None] * num_layers
        self.lens = [0] * num_layers

    @property
    def length(self) -> int:
        """Tokens cached (positions 0..length-1)."""
        return self.lens[0]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add k [h, t, dk], v [h, t, dv]; return views over all cached tokens of this layer."""
        n, t = self.lens[layer], k.shape[1]
        kb, vb = self.k[layer], self.v[layer]
        if kb is None or n + t > kb.shape[1]:
            cap = max(16, 2 * (n + t))
            nk = k.new_empty(k.shape[0], cap, k.shape[2])
            nv = v.new_empty(v.shape[0], cap, v.shape[2])
            if kb is not None and n:
                nk[:, :n] = kb[:, :n]
                nv[:, :n] = vb[:, :n]
            self.k[layer], self.v[layer] = kb, vb = nk, nv
        kb[:, n:n + t] = k
        vb[:, n:n + t] = v
        self.lens[layer] = n + t
        return kb[:, :n + t], vb[:, :n + t]

    def export(self, start: int, end: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of the cached tokens [start, end) of every layer (a prefix-cache block)."""
        return [(self.k[i][:, start:end].clone(), self.v[i][:, start:end].clone()) for i in range(len(self.k))]

    def extend(self, block: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Append a block exported by ``export`` (possibly from another sequence with the same prefix)."""
        for i, (k, v) in enumerate(block):
            self.append(i, k, v)

    def truncate(self, length: int) -> None:
        """Forget the tokens from ``length`` on in every layer (undoes a forward that failed part-way)."""
        self.lens = [min(n, length) for n in self.lens]

    def nbytes(self) -> int:
        """Bytes of the tokens held (not of the spare capacity)."""
        total = 0
        for k, v, n in zip(self.k, self.v, self.lens):
            if k is not None:
                total += n * (k.shape[0] * k.shape[2] * k.element_size() + v.shape[0] * v.shape[2] * v.element_size())
        return total
