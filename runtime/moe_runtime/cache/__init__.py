"""Prefix (context) cache: prompt KV in fixed-size token blocks keyed by a chained hash, memory + disk tiers."""
from .prefix import PrefixCache, block_keys

__all__ = ["PrefixCache", "block_keys"]
