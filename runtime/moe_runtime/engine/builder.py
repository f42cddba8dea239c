"""RuntimeConfig -> TorchEngine (model loaded, experts placed, prefix cache attached; not yet started)."""
from __future__ import annotations

import os

import torch

from moe_runtime.cache import PrefixCache
from moe_runtime.cache.slots import writer_dir
from moe_runtime.checkpoint.tiny import resolve_source
from moe_runtime.model.load import load_model

from .core import TorchEngine


def build_engine_from_config(config) -> TorchEngine:
    """MOE_TORCH_THREADS (env) caps torch's CPU threads: on shared hosts OpenMP spinning makes small matmuls slow."""
    threads = os.environ.get("MOE_TORCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    directory = resolve_source(config.model_source)
    loaded = load_model(directory, device=config.device, dtype=config.dtype, quant=config.quantization,
                        placement=config.placement)
    c = config.cache
    cache = None
    if c.prefix:
        # the disk tier's volume may be shared by the pool's replicas: each writes its own slot (cache/slots.py)
        disk = writer_dir(c.disk_dir) if c.disk_dir else None
        cache = PrefixCache(loaded.fingerprint, c.block_tokens, c.memory_bytes, str(disk) if disk else None,
                            c.disk_bytes)
    return TorchEngine(loaded, model_name=config.model_name, max_batch_size=config.max_batch_size,
                       max_queue=config.max_queue, max_context_tokens=config.max_context_tokens, prefix_cache=cache)
