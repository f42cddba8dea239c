"""API prices for `moectl cost`: US$ per 1M tokens, dated and sourced.

Recorded without network access from the providers' public pricing pages as of PRICES_DATE; verify before
relying on them (providers change prices often). ``cached_input`` is the price of prompt tokens served from
the provider's context cache (DeepSeek "cache hit", OpenAI "cached input", Anthropic "cache read",
Google "context caching").
"""
from __future__ import annotations

from dataclasses import dataclass

PRICES_DATE = "2025-02"


@dataclass(frozen=True)
class ApiPrice:
    name: str
    input: float          # $/1M prompt tokens, cache miss
    cached_input: float   # $/1M prompt tokens, cache hit
    output: float         # $/1M generated tokens
    source: str

    def blended(self, cache_hit_ratio: float, output_fraction: float) -> float:
        """$/1M tokens of a mix: ``output_fraction`` of tokens generated, the rest prompt at the hit ratio."""
        prompt = (1 - cache_hit_ratio) * self.input + cache_hit_ratio * self.cached_input
        return (1 - output_fraction) * prompt + output_fraction * self.output


API_PRICES: tuple[ApiPrice, ...] = (
    ApiPrice(
        "deepseek-chat",
        0.27,
        0.07,
        1.10,
        "api-docs.deepseek.com/quick_start/pricing, DeepSeek-V3 standard price from 2025-02-09 (UTC 00:30-16:30)",
    ),
    ApiPrice(
        "deepseek-reasoner",
        0.55,
        0.14,
        2.19,
        "api-docs.deepseek.com/quick_start/pricing, DeepSeek-R1 standard price from 2025-02-09 (UTC 00:30-16:30)",
    ),
    ApiPrice("gpt-4o", 2.50, 1.25, 10.00, "openai.com/api/pricing, gpt-4o-2024-08-06"),
    ApiPrice("gpt-4o-mini", 0.15, 0.075, 0.60, "openai.com/api/pricing, gpt-4o-mini-2024-07-18"),
    ApiPrice(
        "claude-3.5-sonnet",
        3.00,
        0.30,
        15.00,
        "anthropic.com/pricing#api, Claude 3.5 Sonnet, prompt caching read = 0.1x input",
    ),
    ApiPrice(
        "claude-3.5-haiku",
        0.80,
        0.08,
        4.00,
        "anthropic.com/pricing#api, Claude 3.5 Haiku, prompt caching read = 0.1x input",
    ),
    ApiPrice(
        "gemini-2.0-flash",
        0.10,
        0.025,
        0.40,
        "ai.google.dev/gemini-api/docs/pricing, Gemini 2.0 Flash paid tier, text input",
    ),
)
