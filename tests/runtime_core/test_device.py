"""Device selection, and the same correctness check on CUDA / NPU where one is present (skipped otherwise:
an accelerator is hardware this machine may not have, not a component CI must provide)."""
from __future__ import annotations

import pytest
import torch

from moe_runtime.device import npu_available, resolve_device
from moe_runtime.model.load import load_model
from runtime_core.rc_helpers import greedy


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in {"cpu", "cuda", "npu"}
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.parametrize("device", ["cuda", "npu"])
def test_accelerator_matches_cpu(tiny_dir, tiny, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    if device == "npu" and not npu_available():
        pytest.skip("no Ascend NPU (torch_npu) here")
    lm = load_model(tiny_dir, device=device)
    prompt = tiny.tokenizer.encode("The router scores each expert and keeps the top k.")
    ref, ref_logits = greedy(tiny.model, prompt, 8)
    out, logits = greedy(lm.model, prompt, 8)
    assert out == ref
    assert (logits.cpu() - ref_logits).abs().max().item() < 1e-2  # TF32 / other kernels on the accelerator
