"""``graceful_shutdown_timeout_s`` of the ``engine-<pool>`` deployments: how long Serve lets a replica it stops on a
scale-down finish its in-flight requests. Pure.

A copy of moe_operator/render/drain.py, where the figures are explained (the runtime never imports the operator);
tests/render/test_drain.py checks that the two agree.
"""
from __future__ import annotations

import math

DEFAULT_SECONDS_PER_TOKEN = 0.2   # per output token per sequence without a TPOT target: the engine's decode figures
TAIL_FACTOR = 1.25
MARGIN_S = 30
MAX_DRAIN_S = 3600


def drain_timeout_s(max_context_tokens: int, seconds_per_token: float | None = None) -> int:
    """The longest request (``max_context_tokens`` tokens at ``seconds_per_token``, default
    DEFAULT_SECONDS_PER_TOKEN) x TAIL_FACTOR + MARGIN_S, whole seconds, at most MAX_DRAIN_S."""
    per_token = DEFAULT_SECONDS_PER_TOKEN if seconds_per_token is None else float(seconds_per_token)
    if not per_token > 0 or max_context_tokens < 0:
        raise ValueError(f"need seconds_per_token > 0 and max_context_tokens >= 0, got {per_token}, "
                         f"{max_context_tokens}")
    return min(MAX_DRAIN_S, math.ceil(max_context_tokens * per_token * TAIL_FACTOR + MARGIN_S))
