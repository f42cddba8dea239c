"""A cached block = the K/V of ``block_tokens`` prompt tokens for every decoder layer; bytes <-> tensors."""
from __future__ import annotations

import hashlib
import json
import struct

import torch

Block = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: k [kv_heads, tokens, dk], v [kv_heads, tokens, dv]
MAGIC = b"MOEKVB01"
_DTYPES = {str(d): d for d in (torch.float32, torch.bfloat16, torch.float16)}


def block_nbytes(block: Block) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in block)


def _raw(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def encode_block(block: Block, fingerprint: str, key: str) -> bytes:
    """MAGIC | u32 header length | header JSON (model fingerprint, key, tensor dtypes/shapes, payload sha256) | payload."""
    tensors = [t for kv in block for t in kv]
    payload = b"".join(_raw(t) for t in tensors)
    header = json.dumps({"model": fingerprint, "key": key, "sha256": hashlib.sha256(payload).hexdigest(),
                         "tensors": [[str(t.dtype), list(t.shape)] for t in tensors]}).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + payload


class BadBlock(Exception):
    """A file that is not a valid block of this model (corrupt, truncated or written for another model)."""

    def __init__(self, kind: str, why: str):
        self.kind = kind  # "corrupt" | "foreign"
        super().__init__(why)


def decode_block(data: bytes, fingerprint: str, key: str) -> Block:
    if len(data) < 12 or data[:8] != MAGIC:
        raise BadBlock("corrupt", "bad magic")
    (n,) = struct.unpack("<I", data[8:12])
    try:
        header = json.loads(data[12:12 + n])
    except ValueError:
        raise BadBlock("corrupt", "header is not JSON") from None
    if header.get("model") != fingerprint or header.get("key") != key:
        raise BadBlock("foreign", "block was written for another model or prefix")
    payload = data[12 + n:]
    if hashlib.sha256(payload).hexdigest() != header.get("sha256"):
        raise BadBlock("corrupt", "checksum mismatch")
    out, off = [], 0
    flat = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else torch.empty(0, dtype=torch.uint8)
    tensors = []
    for dtype_name, shape in header["tensors"]:
        dt = _DTYPES.get(dtype_name)
        if dt is None:
            raise BadBlock("corrupt", f"unknown dtype {dtype_name}")
        size = dt.itemsize
        for s in shape:
            size *= s
        if off + size > len(payload):
            raise BadBlock("corrupt", "payload shorter than header says")
        tensors.append(flat[off:off + size].view(dt).reshape(shape))
        off += size
    if off != len(payload) or len(tensors) % 2:
        raise BadBlock("corrupt", "payload length disagrees with header")
    for i in range(0, len(tensors), 2):
        out.append((tensors[i], tensors[i + 1]))
    return out
