"""The torch serving engine: continuous batching over the MoE model. See engine/api.py for the interface."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .api import AsyncEngine, EngineStats, PromptTooLong, QueueFull, SamplingParams, TokenEvent, Usage

if TYPE_CHECKING:  # pragma: no cover
    from moe_runtime.config import RuntimeConfig

__all__ = [
    "AsyncEngine", "EngineStats", "PromptTooLong", "QueueFull", "SamplingParams", "TokenEvent", "Usage", "build_engine",
]


def build_engine(config: "RuntimeConfig") -> AsyncEngine:
    """Build (not start) the engine a RuntimeConfig describes; torch is imported only here."""
    from .builder import build_engine_from_config

    return build_engine_from_config(config)
