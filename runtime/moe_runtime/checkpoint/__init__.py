"""Checkpoints: Hugging Face config.json + safetensors readers, the tokenizer, and the generated tiny model."""
from .errors import CheckpointError

__all__ = ["CheckpointError"]
