"""``graceful_shutdown_timeout_s`` of the ``engine-<pool>`` deployments: how long Serve lets a replica it stops on a
scale-down finish its in-flight requests (issue 13, drain-aware scale-down). Pure, torch-free: the operator's render
(moe_operator/render/drain.py) imports it, as ``moectl up`` and the Serve app do, so there is one formula.

When a deployment's ``num_replicas`` is lowered, Ray Serve's controller picks the replicas to stop, stops routing
new requests to them and lets each finish its in-flight requests for up to ``graceful_shutdown_timeout_s`` (checked
every ``graceful_shutdown_wait_loop_s``, 2 s) before it kills the actor. The timeout is sized from the longest
request the spec allows: ``maxContextTokens`` tokens at the TPOT target (``spec.autoscaling.slo.tpotP95Seconds``,
used while the autoscaler is on, since only then does something hold TPOT near it), else at
DEFAULT_SECONDS_PER_TOKEN; plus TAIL_FACTOR and MARGIN_S; at most MAX_DRAIN_S.
"""
from __future__ import annotations

import math

# Per output token, per sequence, when the spec gives no TPOT target. The torch engine's own decode figures
# (docs/benchmarks/runtime.md, tiny model on CPU): 25 tok/s at batch 1 and 213 tok/s at batch 8 in one process
# (40 and 38 ms per token per sequence); 72 tok/s at batch 8 with 4 Ray expert shards (0.11 s per token per
# sequence); under Ray Serve on a loaded 2-core machine 30 s windows of TPOT p50 reached 0.19 s
# (docs/benchmarks.md, simulator validation run B). 0.2 s covers all of them, and a full batch of 16
# (RuntimeConfig's default) of the sharded case is about 2 x 0.11 s.
DEFAULT_SECONDS_PER_TOKEN = 0.2
TAIL_FACTOR = 1.25   # a p95 is not a maximum: the longest request's slowest tokens and its prefill
MARGIN_S = 30        # Serve's 2 s wait loop, the ingress and proxy hops, the engine's own stop
MAX_DRAIN_S = 3600   # a bound: past an hour a scale-down is not worth holding capacity for


def drain_timeout_s(max_context_tokens: int, seconds_per_token: float | None = None) -> int:
    """``graceful_shutdown_timeout_s`` of an engine deployment, whole seconds in [MARGIN_S, MAX_DRAIN_S].

    ``seconds_per_token``: the TPOT target, or None for DEFAULT_SECONDS_PER_TOKEN.
    """
    per_token = DEFAULT_SECONDS_PER_TOKEN if seconds_per_token is None else float(seconds_per_token)
    if not per_token > 0 or max_context_tokens < 0:
        raise ValueError(f"need seconds_per_token > 0 and max_context_tokens >= 0, got {per_token}, "
                         f"{max_context_tokens}")
    return min(MAX_DRAIN_S, math.ceil(max_context_tokens * per_token * TAIL_FACTOR + MARGIN_S))
