"""A cached block = the K/V of ``block_tokens`` prompt tokens for every decoder layer; bytes <-> tensors."""
from __future__ import annotations

import hashlib
import json
import math
import struct

import torch

import moe_runtime

Block = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: k [kv_heads, tokens, dk], v [kv_heads, tokens, dv]
Spec = list[tuple[str, tuple[int, ...]]]  # (dtype name, shape) of each tensor of a block: k then v, layer by layer
MAGIC = b"MOEKVB02"
DIGEST = 32  # trailing sha256 over magic, header length, header and payload
_DTYPES = {str(d): d for d in (torch.float32, torch.bfloat16, torch.float16)}


def block_nbytes(block: Block) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in block)


def block_spec(block: Block) -> Spec:
    return [(str(t.dtype), tuple(t.shape)) for kv in block for t in kv]


def _raw(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def encode_block(block: Block, fingerprint: str, key: str) -> bytes:
    """MAGIC | u32 header length | header JSON (model fingerprint, key, runtime version, tensor dtypes/shapes) |
    payload | sha256 of all that: a flipped or missing byte anywhere, header included, fails the checksum."""
    tensors = [t for kv in block for t in kv]
    header = json.dumps({"model": fingerprint, "key": key, "runtime": moe_runtime.__version__,
                         "tensors": [[d, list(s)] for d, s in block_spec(block)]}).encode()
    body = MAGIC + struct.pack("<I", len(header)) + header + b"".join(_raw(t) for t in tensors)
    return body + hashlib.sha256(body).digest()


class BadBlock(Exception):
    """A file that is not a valid block for this reader: "corrupt" (checksum, truncation, malformed header) or
    "foreign" (intact, but written for another model, prefix, runtime version, or tensor shapes/dtypes)."""

    def __init__(self, kind: str, why: str):
        self.kind = kind  # "corrupt" | "foreign"
        super().__init__(why)


def _header_spec(tensors) -> Spec:
    """The header's tensor list, checked to be [[known dtype, [3 non-negative ints]], ...] with k/v pairs."""
    if not isinstance(tensors, list) or len(tensors) % 2:
        raise BadBlock("corrupt", "header tensor list is malformed")
    out = []
    for t in tensors:
        ok = isinstance(t, list) and len(t) == 2 and t[0] in _DTYPES and isinstance(t[1], list) and len(t[1]) == 3
        if not ok or not all(type(d) is int and d >= 0 for d in t[1]):
            raise BadBlock("corrupt", f"header tensor entry {str(t)[:80]} is malformed")
        out.append((t[0], tuple(t[1])))
    return out


def decode_block(data: bytes, fingerprint: str, key: str, spec: Spec | None = None) -> Block:
    """The block in ``data``, or BadBlock (never another exception). ``spec``: the dtypes and shapes this
    model's blocks have (None: any well-formed ones)."""
    head = len(MAGIC) + 4
    if len(data) < head + DIGEST or data[:len(MAGIC)] != MAGIC:
        raise BadBlock("corrupt", "not a block file of this format (bad magic or truncated)")
    body = data[:-DIGEST]
    if hashlib.sha256(body).digest() != data[-DIGEST:]:
        raise BadBlock("corrupt", "checksum mismatch (header or payload changed or truncated)")
    (n,) = struct.unpack("<I", body[len(MAGIC):head])
    try:
        header = json.loads(body[head:head + n])
    except ValueError:
        header = None
    if not isinstance(header, dict) or head + n > len(body):
        raise BadBlock("corrupt", "header is not a JSON object")
    tensors = _header_spec(header.get("tensors"))
    if header.get("model") != fingerprint or header.get("key") != key:
        raise BadBlock("foreign", "block was written for another model or prefix")
    if header.get("runtime") != moe_runtime.__version__:
        raise BadBlock("foreign", f"block was written by runtime {str(header.get('runtime'))[:40]}")
    if spec is not None and tensors != spec:
        raise BadBlock("foreign", "block tensors do not have this model's shapes and dtypes")
    payload = body[head + n:]
    sizes = [_DTYPES[d].itemsize * math.prod(s) for d, s in tensors]
    if sum(sizes) != len(payload):
        raise BadBlock("corrupt", "payload length disagrees with header")
    flat = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else torch.empty(0, dtype=torch.uint8)
    out, off = [], 0
    for (d, shape), size in zip(tensors, sizes):
        out.append(flat[off:off + size].view(_DTYPES[d]).reshape(shape))
        off += size
    return [(out[i], out[i + 1]) for i in range(0, len(out), 2)]
