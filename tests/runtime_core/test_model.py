"""The decoder for every supported layout: loads published weight names, and KV-cached decoding equals a full
forward (the cache is exact up to float rounding); routing matches hand-computed DeepSeek group-limited choices."""
from __future__ import annotations

import pytest
import torch

from runtime_core.rc_archs import BUILDERS
from runtime_core.rc_helpers import greedy
from moe_runtime.model.config import MoEConfig
from moe_runtime.model.load import load_model
from moe_runtime.model.router import route


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_layout_loads_and_cached_decode_matches_full_forward(arch, tmp_path):
    d = BUILDERS[arch](tmp_path / arch)
    lm = load_model(d, tokenizer=False)
    assert lm.cfg.arch == arch
    m = lm.model
    prompt = [3, 17, 42, 99, 5, 64, 7]
    out, rows = greedy(m, prompt, 6)
    full = m([prompt + out[:-1]], [m.new_kv()], all_logits=True)[len(prompt) - 1:]
    assert torch.isfinite(full).all()
    assert torch.allclose(rows, full, atol=1e-4, rtol=1e-4), (rows - full).abs().max()
    # greedy ran 7 + 6 tokens, the full forward 7 + 5: every token is routed to top_k experts in each MoE layer
    assert m.expert_counts.sum() == lm.cfg.num_moe_layers * lm.cfg.top_k * (2 * len(prompt) + 11)


def test_dense_and_moe_layers_follow_config(tmp_path):
    cfg = MoEConfig.from_hf(
        __import__("json").loads((BUILDERS["deepseek_v3"](tmp_path / "d") / "config.json").read_text())
    )
    assert cfg.moe_layers == [1, 2] and cfg.shared_intermediate_size == 32 and cfg.score_correction_bias
    q = MoEConfig.from_hf(__import__("json").loads((BUILDERS["qwen3_moe"](tmp_path / "q") / "config.json").read_text()))
    assert q.moe_layers == [1, 2] and q.qk_norm and not q.shared_intermediate_size


def _cfg(**kw):
    base = dict(arch="deepseek_v3", vocab_size=8, hidden_size=4, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=4,
                intermediate_size=4, moe_intermediate_size=4, num_experts=8, top_k=2)
    base.update(kw)
    return MoEConfig(**base)


def test_deepseek_v3_group_limited_routing_by_hand():
    # 4 groups of 2 experts; topk_group=1 keeps only the group whose top-2 sum (with bias) is largest
    cfg = _cfg(scoring="sigmoid", topk_method="noaux_tc", n_group=4, topk_group=1, norm_topk_prob=True,
               routed_scaling_factor=2.0)
    logits = torch.tensor([[5.0, -5, 0.0, 0.1, 1.0, 1.0, -1, -1]])
    # without bias: group0 sums to s(5)+s(-5)=~1.0, group2 = 2*s(1) = 1.46 -> group 2 (experts 4, 5)
    ids, w = route(logits, cfg)
    assert sorted(ids[0].tolist()) == [4, 5]
    assert torch.allclose(w.sum(), torch.tensor(2.0))  # normalised, then scaled by routed_scaling_factor
    # a correction bias steers the choice but not the weights
    bias = torch.tensor([0, 0, 3.0, 3.0, 0, 0, 0, 0])
    ids, w = route(logits, cfg, bias)
    assert sorted(ids[0].tolist()) == [2, 3]
    s = torch.sigmoid(torch.tensor([0.0, 0.1]))
    assert torch.allclose(w[0].sort().values, (s / s.sum() * 2.0).sort().values)


def test_softmax_topk_without_normalisation_keeps_raw_probabilities():
    cfg = _cfg(arch="qwen2_moe", scoring="softmax", norm_topk_prob=False, num_experts=4)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    ids, w = route(logits, cfg)
    p = torch.softmax(logits, -1)[0]
    assert ids[0].tolist() == [0, 1] and torch.allclose(w[0], p[:2])
    ids, w = route(logits, _cfg(arch="mixtral", num_experts=4, norm_topk_prob=True))
    assert torch.allclose(w[0], p[:2] / p[:2].sum())
