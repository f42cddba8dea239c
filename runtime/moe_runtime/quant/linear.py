"""Linear layers whose weights are stored float, int8 or int4; activations stay in the compute dtype.

int8: symmetric, one scale per output channel: w ~= q * s, q in [-127, 127].
int4: symmetric, one float16 scale per (output channel, group of ``group`` inputs): q in [-8, 7], packed two per uint8.
The weight is dequantized to the compute dtype inside forward (weight-only quantization saves memory, not FLOPs).
"""
from __future__ import annotations

import torch
from torch import nn

INT4_GROUP = 32


class DenseLinear(nn.Module):
    """y = x W^T (+ b) with W kept in the compute dtype."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.out_features, self.in_features = weight.shape

    def dequantized(self) -> torch.Tensor:
        return self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


class Int8Linear(nn.Module):
    """int8 weight, float scale per output channel (shape [out])."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        w = weight.float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale.to(weight.dtype))
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.out_features, self.in_features = weight.shape

    def dequantized(self) -> torch.Tensor:
        return self.qweight.to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.dequantized().to(x.dtype), self.bias)


class Int4Linear(nn.Module):
    """int4 weight packed two per byte (low nibble = even input index), scale per (out, group)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, group: int = INT4_GROUP):
        super().__init__()
        out_f, in_f = weight.shape
        group = min(group, in_f)
        if in_f % group or in_f % 2:
            raise ValueError(f"int4 needs in_features ({in_f}) divisible by the group size ({group}) and by 2")
        w = weight.float().reshape(out_f, in_f // group, group)
        scale = (w.abs().amax(dim=2) / 7.0).clamp(min=1e-12)
        q = torch.round(w / scale[:, :, None]).clamp(-8, 7).to(torch.int16).reshape(out_f, in_f)
        u = (q & 0xF).to(torch.uint8)
        packed = u[:, 0::2] | (u[:, 1::2] << 4)
        self.register_buffer("qweight", packed.contiguous())
        self.register_buffer("scale", scale.to(torch.float16))  # 2 bytes per group of 32: 0.0625 byte/weight
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.group = group
        self.out_features, self.in_features = out_f, in_f

    def unpacked(self) -> torch.Tensor:
        """The int4 values as int8 in [-8, 7], shape [out, in] (arithmetic shifts sign-extend each nibble)."""
        p = self.qweight.view(torch.int8)
        lo = torch.bitwise_right_shift(torch.bitwise_left_shift(p, 4), 4)
        hi = torch.bitwise_right_shift(p, 4)
        return torch.stack([lo, hi], dim=2).reshape(self.out_features, self.in_features)

    def dequantized(self) -> torch.Tensor:
        q = self.unpacked().float().reshape(self.out_features, -1, self.group)
        return (q * self.scale.float()[:, :, None]).reshape(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.dequantized().to(x.dtype), self.bias)


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None = None, mode: str = "none") -> nn.Module:
    """A linear layer for ``mode`` in none | int8 | int4 (int4 falls back to int8 when shapes do not pack)."""
    if mode in ("none", None, ""):
        return DenseLinear(weight, bias)
    if mode == "int8":
        return Int8Linear(weight, bias)
    if mode == "int4":
        if weight.shape[1] % 2 == 0 and weight.shape[1] % min(INT4_GROUP, weight.shape[1]) == 0:
            return Int4Linear(weight, bias)
        return Int8Linear(weight, bias)
    raise ValueError(f"unknown quantization {mode!r}; expected none, int8 or int4")


def weight_bytes(module: nn.Module) -> int:
    """Bytes of weight storage (quantized values + scales + biases) under ``module``."""
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        total += t.numel() * t.element_size()
    return total
