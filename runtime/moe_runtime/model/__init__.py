"""The MoE decoder (Mixtral, Qwen2/Qwen3-MoE, DeepSeek-V2/V3 layouts) and its loader."""
from .config import MoEConfig
from .kv import SeqKV

__all__ = ["MoEConfig", "SeqKV"]
