"""Default container images per vendor and engine, and the Ray version they ship.

Overridable cluster-wide (``Images.from_mapping`` over the operator's ``--images`` YAML file or the
``MOE_IMAGES`` environment variable holding the same YAML) and per pool (``spec.pools[].image``).
The head runs the Serve controller and must import the app: it uses the engine's image for the
first pool's vendor family without accelerators (``cpu`` variant for torch, the CUDA image for vLLM).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

import yaml

from moe_operator.errors import UserError

RUNTIME_VERSION = "0.1.0"


@dataclass(frozen=True)
class Images:
    """Image names; keys are ``<engine>_<vendor>`` plus the head images and the Ray version."""

    ray_version: str = "2.49.1"
    torch_cpu: str = f"ghcr.io/moe-operator/runtime:{RUNTIME_VERSION}-cpu"
    torch_nvidia: str = f"ghcr.io/moe-operator/runtime:{RUNTIME_VERSION}-cuda"
    torch_huawei: str = f"ghcr.io/moe-operator/runtime:{RUNTIME_VERSION}-cann"
    vllm_nvidia: str = "rayproject/ray-llm:2.49.1-py311-cu128"
    vllm_huawei: str = "quay.io/ascend/vllm-ascend:v0.10.1rc1"
    vllm_cpu: str = "rayproject/ray-llm:2.49.1-py311-cu128"

    def worker(self, engine: str, vendor: str) -> str:
        return getattr(self, f"{engine}_{vendor}")

    def head(self, engine: str) -> str:
        """Head image: accelerator-free, but able to import the Serve app (moe_runtime or ray.serve.llm)."""
        return self.torch_cpu if engine == "torch" else self.vllm_nvidia

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "Images":
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown image keys {unknown}; known keys: {sorted(known)}")
        return replace(cls(), **{k: str(v) for k, v in data.items()})

    @classmethod
    def from_env(cls) -> "Images":
        """Defaults, overridden by the YAML mapping in ``MOE_IMAGES`` (a path or inline YAML) when set."""
        return cls.from_source(os.environ.get("MOE_IMAGES", ""))

    @classmethod
    def from_source(cls, raw: str) -> "Images":
        """Defaults overridden by a YAML mapping given as a file path or inline text ("" = defaults)."""
        raw = raw.strip()
        if not raw:
            return cls()
        text = open(raw, encoding="utf-8").read() if os.path.exists(raw) else raw
        data = yaml.safe_load(text)
        if not isinstance(data, dict):
            raise UserError("MOE_IMAGES must be a YAML mapping of image keys to image names")
        return cls.from_mapping(data)
