"""Default container images per vendor and engine, and the Ray version each engine's images ship.

Overridable cluster-wide (``Images.from_mapping`` over the operator's ``--images`` YAML file or the
``MOE_IMAGES`` environment variable holding the same YAML) and per pool (``spec.pools[].image``).
The head runs the Serve controller and must import the app: it uses the engine's image for the
first pool's vendor family without accelerators (``cpu`` variant for torch, the CUDA image for vLLM).

Ray needs one Ray version and one Python minor on every node of a cluster, and a cluster runs one engine, so
the version is per engine: ``ray_version`` for the torch runtime images (built here, Python 3.11),
``vllm_ray_version`` for the vLLM images (``rayproject/ray-llm``, Python 3.12, and our vllm-ascend image built
on the same Ray and Python; images/README.md says where each tag was checked).
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
    """Image names; keys are ``<engine>_<vendor>`` plus the Ray version of each engine's images."""

    ray_version: str = "2.49.1"            # torch runtime images (images/runtime-*.Dockerfile RAY_VERSION)
    vllm_ray_version: str = "2.58.0"       # vLLM images (ray-llm tag, images/vllm-ascend.Dockerfile RAY_VERSION)
    torch_cpu: str = f"ghcr.io/moe-operator/runtime:{RUNTIME_VERSION}-cpu"
    torch_nvidia: str = f"ghcr.io/moe-operator/runtime:{RUNTIME_VERSION}-cuda"
    torch_huawei: str = f"ghcr.io/moe-operator/runtime:{RUNTIME_VERSION}-cann"
    vllm_nvidia: str = "rayproject/ray-llm:2.58.0-py312-cu130"
    vllm_huawei: str = f"ghcr.io/moe-operator/vllm-ascend:{RUNTIME_VERSION}"
    vllm_cpu: str = "rayproject/ray-llm:2.58.0-py312-cu130"
    # the head of a vLLM deployment of two or more pools, which runs the router (images/vllm-router.Dockerfile)
    vllm_router: str = f"ghcr.io/moe-operator/vllm-router:{RUNTIME_VERSION}"

    def worker(self, engine: str, vendor: str) -> str:
        return getattr(self, f"{engine}_{vendor}")

    def head(self, engine: str, pools: int = 1) -> str:
        """Head image: accelerator-free, but able to import the Serve apps (moe_runtime or ray.serve.llm; a vLLM
        deployment of two or more pools also runs the router, moe_runtime.vllm_router, on its head)."""
        if engine == "torch":
            return self.torch_cpu
        return self.vllm_router if pools >= 2 else self.vllm_nvidia

    def ray_version_for(self, engine: str) -> str:
        """The ``rayVersion`` of a RayCluster serving ``engine``: the Ray its head and worker images ship."""
        return self.ray_version if engine == "torch" else self.vllm_ray_version

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
