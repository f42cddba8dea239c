"""Weight-only int8 / int4: packing is exact, per-weight error within half a quantization step, memory ratios
vs bf16 meet the targets (<= 0.55x, <= 0.30x), and the tiny model's logits stay close."""
from __future__ import annotations

import pytest
import torch

from runtime_core.rc_helpers import greedy
from moe_runtime.model.load import load_model
from moe_runtime.quant import Int4Linear, Int8Linear, weight_bytes


def test_int8_error_is_at_most_half_a_step_per_channel():
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(0))
    q = Int8Linear(w)
    step = w.abs().amax(1, keepdim=True) / 127
    assert ((q.dequantized() - w).abs() <= step / 2 + 1e-6).all()
    x = torch.randn(5, 96)
    assert torch.allclose(q(x), x @ q.dequantized().T, atol=1e-5)


def test_int4_packs_two_per_byte_and_error_is_at_most_half_a_step_per_group():
    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(1))
    q = Int4Linear(w, group=32)
    assert q.qweight.dtype == torch.uint8 and q.qweight.shape == (48, 64)
    u = q.unpacked()
    assert u.min() >= -8 and u.max() <= 7
    step = (w.reshape(48, 4, 32).abs().amax(2, keepdim=True) / 7).expand(48, 4, 32).reshape(48, 128)
    # half a step, plus float16 rounding of the scale (relative 2^-11, times at most 8 steps)
    assert ((q.dequantized() - w).abs() <= step * (0.5 + 8 * 2**-11) + 1e-6).all()
    # values round-trip exactly through the nibble packing
    ref = torch.round(w.reshape(48, 4, 32) / (step.reshape(48, 4, 32))).clamp(-8, 7).reshape(48, 128).to(torch.int8)
    assert torch.equal(u, ref)


@pytest.mark.parametrize("mode,ratio_max,logit_err_max", [("int8", 0.55, 0.05), ("int4", 0.30, 0.5)])
def test_quantized_tiny_model_memory_and_logits(tiny_dir, tiny, mode, ratio_max, logit_err_max):
    lm = load_model(tiny_dir, quant=mode)
    bf16 = sum(p.numel() for p in tiny.model.backend.parameters()) * 2
    ratio = weight_bytes(lm.model.backend) / bf16
    assert ratio <= ratio_max, ratio
    prompt = tiny.tokenizer.encode("The quick brown fox jumps over the lazy dog.")
    _, ref = greedy(tiny.model, prompt, 1)
    _, got = greedy(lm.model, prompt, 1)
    err = (got - ref).abs().max().item()
    assert 0 < err < logit_err_max, err  # nonzero: quantization really happened
