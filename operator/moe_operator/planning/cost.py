"""Cost: US$ per replica-hour and US$ per million tokens at a utilisation and token mix.

    seconds_per_token(mix) = prompt / prefill_tps + cached_prompt / cached_prefill_tps + generated / decode_tps
    $/1M tokens            = price_per_hour * seconds_per_token(mix) / (utilisation * 3600) * 1e6

``utilisation`` is the fraction of a replica's time spent serving (the autoscaler's targetUtilization is the
planned value). A mix gives fractions of the tokens by kind; they are normalised to sum to 1.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from moe_operator.errors import UserError
from moe_operator.planning.capacity import PoolCapacity


class TokenMix(BaseModel):
    """Fractions of tokens by kind (any non-negative weights; normalised)."""

    model_config = ConfigDict(frozen=True)

    prompt: float = Field(default=0.45, ge=0)
    cached_prompt: float = Field(default=0.45, ge=0)
    generated: float = Field(default=0.10, ge=0)

    def normalised(self) -> tuple[float, float, float]:
        total = self.prompt + self.cached_prompt + self.generated
        if total <= 0:
            raise UserError("a token mix needs at least one positive fraction")
        return self.prompt / total, self.cached_prompt / total, self.generated / total


# Planning's assumed mix: 10 prompt tokens per generated token, half of the prompt tokens prefix-cache hits
# (DeepSeek reported a ~56% hit ratio on its API). The autoscaler uses the observed mix instead.
DEFAULT_MIX = TokenMix()


def seconds_per_token(capacity: PoolCapacity, mix: TokenMix = DEFAULT_MIX) -> float:
    """Replica-seconds one token of ``mix`` takes at full load."""
    p, c, g = mix.normalised()
    return p / capacity.prefill_tps + c / capacity.cached_prefill_tps + g / capacity.decode_tps


def cost_per_million_tokens(capacity: PoolCapacity, utilisation: float, mix: TokenMix = DEFAULT_MIX) -> float:
    """US$ per 1M tokens of ``mix`` served by replicas busy ``utilisation`` (0 < u <= 1) of the time."""
    if not 0 < utilisation <= 1:
        raise UserError(f"utilisation must be in (0, 1], got {utilisation}")
    return capacity.price_per_hour * seconds_per_token(capacity, mix) / (utilisation * 3600) * 1e6


class CostSummary(BaseModel):
    """Cost of one replica: per hour, and per 1M tokens of each kind and of the planning mix, at ``utilisation``."""

    model_config = ConfigDict(frozen=True)

    price_per_device_hour: float
    price_per_replica_hour: float
    utilisation: float
    per_million_prompt: float
    per_million_cached_prompt: float
    per_million_generated: float
    per_million_blended: float
    mix: TokenMix


def cost_summary(
    capacity: PoolCapacity, price_per_device_hour: float, utilisation: float, mix: TokenMix = DEFAULT_MIX
) -> CostSummary:
    """All cost figures `moectl plan` shows for a pool."""
    return CostSummary(
        price_per_device_hour=price_per_device_hour,
        price_per_replica_hour=capacity.price_per_hour,
        utilisation=utilisation,
        per_million_prompt=cost_per_million_tokens(
            capacity, utilisation, TokenMix(prompt=1, cached_prompt=0, generated=0)
        ),
        per_million_cached_prompt=cost_per_million_tokens(
            capacity, utilisation, TokenMix(prompt=0, cached_prompt=1, generated=0)
        ),
        per_million_generated=cost_per_million_tokens(
            capacity, utilisation, TokenMix(prompt=0, cached_prompt=0, generated=1)
        ),
        per_million_blended=cost_per_million_tokens(capacity, utilisation, mix),
        mix=mix,
    )
