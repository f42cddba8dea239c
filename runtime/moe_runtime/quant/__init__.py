"""Weight-only quantization (int8 per output channel, int4 grouped and packed two per byte) for linear layers."""
from .linear import DenseLinear, Int4Linear, Int8Linear, make_linear, weight_bytes

__all__ = ["DenseLinear", "Int4Linear", "Int8Linear", "make_linear", "weight_bytes"]
