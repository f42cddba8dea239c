"""Top-k expert routing as each architecture's config.json says (Mixtral/Qwen softmax, DeepSeek group-limited)."""
from __future__ import annotations

import torch

from .config import MoEConfig


def route(logits: torch.Tensor, cfg: MoEConfig, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose experts per token.

    logits: [N, E] router logits (computed in float32). bias: [E] DeepSeek-V3 e_score_correction_bias (used for the
    choice only, not the weights). Returns (ids [N, k] int64, weights [N, k] float32).
    """
    logits = logits.float()
    scores = torch.sigmoid(logits) if cfg.scoring == "sigmoid" else torch.softmax(logits, dim=-1)
    choice = scores if bias is None else scores + bias.float()[None, :]
    n, e = scores.shape
    if cfg.topk_method in ("group_limited_greedy", "noaux_tc") and cfg.n_group > 1:
        grouped = choice.view(n, cfg.n_group, e // cfg.n_group)
        if cfg.topk_method == "noaux_tc":
            group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1)
        else:
            group_scores = grouped.max(dim=-1).values
        keep = group_scores.topk(cfg.topk_group, dim=-1).indices
        mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
        mask = mask[:, :, None].expand_as(grouped).reshape(n, e)
        choice = choice.masked_fill(~mask, float("-inf"))
    ids = choice.topk(cfg.top_k, dim=-1).indices
    weights = scores.gather(1, ids)
    if cfg.arch == "deepseek_v2":
        if cfg.top_k > 1 and cfg.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        else:
            weights = weights * cfg.routed_scaling_factor
    else:
        if cfg.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        weights = weights * cfg.routed_scaling_factor
    return ids, weights
