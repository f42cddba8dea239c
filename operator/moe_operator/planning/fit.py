"""Memory fit per replica: weights at the chosen quantization + KV cache + overhead against the devices' memory.

    dense         = 2 bytes (bf16), 4 on cpu (the torch engine runs float32 there)
    weights_bytes = embedding_params * dense + (total_params - embedding_params) * BYTES_PER_PARAM[quantization]
    kv_bytes      = kv_elements_per_token * dense * maxContextTokens * maxBatchSize
    needed        = (weights_bytes + kv_bytes) * OVERHEAD_FACTOR
    available     = devicesPerReplica * accelerator.memoryGiB * GiB

The full context of every sequence in the batch is reserved (the worst case a replica admits). Embeddings and the
output head stay 16-bit under every quantization (as fp8/int4 checkpoints ship them). See docs/capacity-model.md.
"""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict

from moe_operator.catalog import Catalog
from moe_operator.planning.model import ModelFacts

GIB = 1024**3

# Bytes per weight. int4 carries an fp16 scale and an fp16 zero point per group of 128 weights (4 / 128 bytes);
# fp8 (128x128 block scales) and int8 (per-channel scales) overheads are under 0.1% and ignored.
BYTES_PER_PARAM: dict[str, float] = {"none": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5 + 4 / 128}
UNQUANTIZED_BYTES = 2.0       # embeddings, output head, and the KV cache (bf16)
CPU_DENSE_BYTES = 4.0         # on cpu the torch engine runs float32 (render's serve config), weights and KV
# Activations, the runtime's context (CUDA/CANN/torch), communication buffers and allocator fragmentation:
# vLLM leaves ~10% of device memory unused by default, graphs and buffers take a few % more.
OVERHEAD_FACTOR = 1.15


class MemoryFit(BaseModel):
    """Memory of one replica, in GiB. ``fits`` when needed <= available."""

    model_config = ConfigDict(frozen=True)

    weights_gib: float
    kv_cache_gib: float
    needed_gib: float
    available_gib: float
    fits: bool
    per_device_gib: float


def dense_bytes(vendor: str) -> float:
    """Bytes per unquantized element (weights, embeddings, KV) on a vendor's devices."""
    return CPU_DENSE_BYTES if vendor == "cpu" else UNQUANTIZED_BYTES


def param_bytes(quantization: str, dense: float = UNQUANTIZED_BYTES) -> float:
    """Bytes per quantized-body weight: the dense width when unquantized, else the quantized size."""
    return dense if quantization == "none" else BYTES_PER_PARAM[quantization]


def weights_bytes(facts: ModelFacts, quantization: str, dense: float = UNQUANTIZED_BYTES) -> float:
    """Bytes of all weights of one model copy at ``quantization`` (embeddings and head stay ``dense``)."""
    body = facts.total_params - facts.embedding_params
    return facts.embedding_params * dense + body * param_bytes(quantization, dense)


def kv_cache_bytes(facts: ModelFacts, context_tokens: int, batch_size: int, dense: float = UNQUANTIZED_BYTES) -> float:
    """Bytes of KV cache for ``batch_size`` sequences of ``context_tokens`` each."""
    return facts.kv_bytes_per_token(dense) * context_tokens * batch_size


def memory_fit(
    facts: ModelFacts,
    quantization: str,
    context_tokens: int,
    batch_size: int,
    devices: int,
    device_memory_gib: float,
    dense: float = UNQUANTIZED_BYTES,
) -> MemoryFit:
    """Does one replica of ``devices`` x ``device_memory_gib`` hold the model, its KV cache and overhead?

    ``dense``: bytes per unquantized element (``dense_bytes(vendor)``).
    """
    w = weights_bytes(facts, quantization, dense)
    kv = kv_cache_bytes(facts, context_tokens, batch_size, dense)
    needed = (w + kv) * OVERHEAD_FACTOR / GIB
    available = devices * device_memory_gib
    return MemoryFit(
        weights_gib=w / GIB,
        kv_cache_gib=kv / GIB,
        needed_gib=needed,
        available_gib=available,
        fits=needed <= available,
        per_device_gib=needed / devices,
    )


def not_fit_message(
    facts: ModelFacts,
    fit: MemoryFit,
    *,
    pool: str,
    accelerator: str,
    devices: int,
    quantization: str,
    context_tokens: int,
    batch_size: int,
    catalog: Catalog,
    valid_device_counts: list[int],
) -> str:
    """One actionable sentence: what is needed, what the pool has, and what would fit instead."""
    acc = catalog.get(accelerator)
    head = (
        f"{facts.architecture} at quantization {quantization} needs {fit.needed_gib:.1f} GiB per replica "
        f"(weights {fit.weights_gib:.1f} GiB + KV cache {fit.kv_cache_gib:.1f} GiB for {context_tokens} tokens x "
        f"{batch_size} sequences, x{OVERHEAD_FACTOR} overhead) but the pool has {devices} x {accelerator} = "
        f"{fit.available_gib:.1f} GiB"
    )
    options = []
    if quantization != "int4":
        q4 = memory_fit(facts, "int4", context_tokens, batch_size, devices, acc.memory_gib, dense_bytes(acc.vendor))
        if q4.fits:
            options.append(f"quantization: int4 ({q4.needed_gib:.1f} GiB)")
    more = next(
        (n for n in valid_device_counts if n > devices and memory_fit(
            facts, quantization, context_tokens, batch_size, n, acc.memory_gib, dense_bytes(acc.vendor)).fits),
        None,
    )
    if more is not None:
        options.append(f"devicesPerReplica: {more} ({more * acc.memory_gib:.0f} GiB)")
    other = _other_accelerator(facts, quantization, context_tokens, batch_size, devices, accelerator, catalog)
    if other:
        options.append(f"accelerator: {other} ({devices} x {catalog.get(other).memory_gib:.0f} GiB)")
    if fit.kv_cache_gib > fit.weights_gib * 0.25:
        options.append("a smaller serving.maxBatchSize or model.maxContextTokens")
    if not options:
        return head + "; no single change fits it: use more devices per replica with a larger accelerator"
    return head + "; it would fit with " + ", or ".join(options)


def _other_accelerator(
    facts: ModelFacts, quantization: str, context_tokens: int, batch_size: int, devices: int, current: str,
    catalog: Catalog,
) -> Optional[str]:
    """The cheapest other accelerator (same device count) that fits; unpriced ones rank by memory after priced."""
    candidates = []
    for key in catalog.keys():
        acc = catalog.get(key)
        if key == current or acc.vendor == "cpu":
            continue
        if quantization == "fp8" and acc.tflops.fp8 is None:
            continue  # fp8 weights need fp8 hardware
        if memory_fit(facts, quantization, context_tokens, batch_size, devices, acc.memory_gib).fits:
            price = acc.price_per_device_hour
            candidates.append((price is None, price or 0.0, acc.memory_gib, key))
    return min(candidates)[3] if candidates else None
