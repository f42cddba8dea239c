"""Device selection on one code path: cpu, cuda (NVIDIA) or npu (Ascend via torch_npu when importable)."""
from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def npu_available() -> bool:
    """True when torch_npu imports and reports at least one NPU."""
    try:
        import torch_npu  # noqa: F401  (registers the "npu" device type with torch)
    except Exception:
        return False
    return bool(getattr(torch, "npu", None) and torch.npu.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` prefers cuda, then npu, then cpu; an explicit device that is absent is an error."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if npu_available():
            return torch.device("npu")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but torch sees no CUDA GPU")
        return torch.device(name)
    if name.startswith("npu"):
        if not npu_available():
            raise RuntimeError(f"device {name!r} requested but torch_npu is not importable or sees no NPU")
        return torch.device(name)
    raise ValueError(f"unknown device {name!r}; expected auto, cpu, cuda or npu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """float16 on CPU is slow and lossy in matmuls; it is allowed but bfloat16/float32 are the CPU choices."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}") from None


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels (timing needs it on cuda/npu; a no-op on cpu)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize()
