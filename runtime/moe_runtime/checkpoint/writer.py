"""Write a Hugging Face style checkpoint: config.json + one model.safetensors, or N shards with an index."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file


def save_checkpoint(
    directory: str | Path, config: dict[str, Any], tensors: dict[str, torch.Tensor], shards: int = 1
) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    names = sorted(tensors)
    if shards <= 1:
        save_file({n: tensors[n].contiguous() for n in names}, str(d / "model.safetensors"), metadata={"format": "pt"})
        return d
    weight_map = {}
    per = (len(names) + shards - 1) // shards
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = names[i * per:(i + 1) * per]
        save_file({n: tensors[n].contiguous() for n in part}, str(d / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    return d
