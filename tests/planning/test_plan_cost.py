"""Cost per hour and per million tokens, computed from capacity by hand."""
from __future__ import annotations

import pytest

from moe_operator.errors import UserError
from moe_operator.planning.capacity import PoolCapacity
from moe_operator.planning.cost import TokenMix, cost_per_million_tokens, cost_summary, seconds_per_token

CAP = PoolCapacity(prefill_tps=10_000.0, decode_tps=500.0, cached_prefill_tps=100_000.0, price_per_hour=8.0)


def test_generated_tokens_by_hand():
    # 500 tokens/s at 50% busy = 900,000 tokens/hour for $8 -> $8.888.. per 1M
    only_generated = TokenMix(prompt=0, cached_prompt=0, generated=1)
    assert cost_per_million_tokens(CAP, 0.5, only_generated) == pytest.approx(8.0 / (500 * 0.5 * 3600) * 1e6)


def test_blended_mix_by_hand():
    mix = TokenMix(prompt=2, cached_prompt=1, generated=1)  # normalised to 0.5 / 0.25 / 0.25
    seconds = 0.5 / 10_000 + 0.25 / 100_000 + 0.25 / 500
    assert seconds_per_token(CAP, mix) == pytest.approx(seconds)
    assert cost_per_million_tokens(CAP, 0.7, mix) == pytest.approx(8.0 * seconds / (0.7 * 3600) * 1e6)


def test_summary_orders_kinds_by_cost():
    s = cost_summary(CAP, price_per_device_hour=1.0, utilisation=0.7)
    assert s.price_per_replica_hour == 8.0
    assert s.per_million_cached_prompt < s.per_million_prompt < s.per_million_generated
    assert s.per_million_prompt == pytest.approx(10 * s.per_million_cached_prompt)
    assert s.per_million_cached_prompt <= s.per_million_blended <= s.per_million_generated


@pytest.mark.parametrize("u", [0, -0.1, 1.5])
def test_utilisation_out_of_range(u):
    with pytest.raises(UserError):
        cost_per_million_tokens(CAP, u)


def test_empty_mix_is_an_error():
    with pytest.raises(UserError):
        seconds_per_token(CAP, TokenMix(prompt=0, cached_prompt=0, generated=0))
