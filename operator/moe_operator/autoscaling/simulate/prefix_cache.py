"""How many prompt blocks one replica's prefix cache holds, from the spec (``moectl simulate``'s replica model).

Units: blocks of the trace's ``block_tokens`` tokens (Mooncake: 512), bytes, GiB. Per pool, because the cache
lives in device memory for vLLM and devices differ between pools:

  * ``spec.cache.prefix: false``: 0 (no hits);
  * engine ``vllm``: vLLM's prefix cache is its paged KV cache (``enable_prefix_caching``): blocks no sequence uses
    stay cached until evicted. Its size is the memory the planner's fit leaves for KV:
    ``devicesPerReplica x memoryGiB / OVERHEAD_FACTOR - weights`` (planning/fit.py), / the KV bytes of one block;
  * engine ``torch``: the runtime's own cache (moe_runtime/cache): ``cache.memoryBytes`` plus the disk tier's
    ``size`` when enabled (a disk hit is priced as a memory hit), / the KV bytes of one block;
  * no model facts (a model planning cannot read): None, and the replica model's default applies
    (``replicas.default_cache_blocks``: the profile's KV tokens / the block size).

KV bytes of one block = ``kv_bytes_per_token`` (at the vendor's dense width, as the fit) x ``block_tokens``.
"""
from __future__ import annotations

from typing import Any

from moe_operator.errors import SpecInvalid


def cache_blocks_from_spec(spec: Any, catalog: Any, block_tokens: int) -> dict[str, int] | None:
    """{pool: prefix-cache blocks per replica} for a MoEDeploymentSpec (module docstring), or None when the
    model's KV size is unknown."""
    from moe_operator.planning.fit import GIB, OVERHEAD_FACTOR, dense_bytes, weights_bytes
    from moe_operator.planning.plan import facts_for, served_quantization

    if not spec.cache.prefix:
        return {p.name: 0 for p in spec.pools}
    try:
        facts = facts_for(spec, catalog)
        quant = served_quantization(spec, facts)
        accs = {p.name: catalog.get(p.accelerator) for p in spec.pools}
    except SpecInvalid:
        return None
    out = {}
    for p in spec.pools:
        acc = accs[p.name]
        dense = dense_bytes(acc.vendor)
        block_bytes = facts.kv_bytes_per_token(dense) * block_tokens
        if block_bytes <= 0:
            return None
        if spec.engine == "vllm":
            cache_bytes = p.devices_per_replica * acc.memory_gib * GIB / OVERHEAD_FACTOR - weights_bytes(
                facts, quant, dense)
        else:
            cache_bytes = spec.cache.memory_bytes
            if spec.cache.disk_tier.enabled:
                from moe_operator.render.context import quantity_bytes
                cache_bytes += quantity_bytes(spec.cache.disk_tier.size)
        out[p.name] = max(0, int(cache_bytes // block_bytes))
    return out
