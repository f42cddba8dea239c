"""Next-token choice: greedy (temperature 0) or temperature + nucleus (top-p) sampling with a per-request seed.

Numerically safe for every legal temperature: below ``GREEDY_BELOW`` sampling is greedy (as in vLLM), and the
logits are shifted by their maximum in float64 before the division, so huge logits or a tiny temperature never
overflow into inf/NaN probabilities (which ``torch.multinomial`` refuses)."""
from __future__ import annotations

import torch

from .api import SamplingParams

GREEDY_BELOW = 1e-5  # temperatures under this are greedy: the distribution is one-hot to float precision anyway


def is_greedy(params: SamplingParams) -> bool:
    return params.temperature < GREEDY_BELOW


def make_generator(params: SamplingParams) -> torch.Generator | None:
    if is_greedy(params):
        return None
    g = torch.Generator()
    g.manual_seed(params.seed if params.seed is not None else torch.seed() % (2**63))
    return g


def sample(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None) -> int:
    """logits: [vocab] float32 (cpu or device)."""
    if is_greedy(params) or gen is None:
        return int(torch.argmax(logits))
    # +inf logits become the largest float (a tie among them), NaN ones are never chosen
    x = torch.nan_to_num(logits.detach().cpu().double(), nan=float("-inf"), posinf=torch.finfo(torch.float64).max)
    probs = torch.softmax((x - x.max()) / params.temperature, dim=-1)
    if params.top_p < 1.0:
        p, idx = torch.sort(probs, descending=True)
        keep = torch.cumsum(p, 0) - p < params.top_p  # always keeps the most likely token
        p = torch.where(keep, p, torch.zeros_like(p))
        return int(idx[torch.multinomial(p / p.sum(), 1, generator=gen)])
    return int(torch.multinomial(probs, 1, generator=gen))


def check_params(params: SamplingParams, vocab: int) -> None:
    """Bad sampling parameters are a ValueError (the HTTP layer turns it into a 400)."""
    if params.max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {params.max_tokens}")
    if not params.temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {params.temperature}")
    if not 0 < params.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {params.top_p}")
    for t in params.stop_token_ids:
        if not 0 <= t < vocab:
            raise ValueError(f"stop token id {t} is outside the vocabulary [0, {vocab})")
