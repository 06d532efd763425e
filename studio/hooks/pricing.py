"""What a Messages API call cost, from the usage the API reports (never estimated).

Input tokens, output tokens, cache writes and cache reads have different prices; the
Message Batches API bills all of them at a discount (half price at the time of writing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from studio.hooks.settings import HookSettings


@dataclass
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, other: TokenUsage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.cache_read_tokens += other.cache_read_tokens
        self.cost_usd += other.cost_usd


def usage_cost(usage: Any, settings: HookSettings, *, discount: float = 1.0) -> TokenUsage:
    """Price an `anthropic.types.Usage` (or anything with its attribute names)."""
    measured = TokenUsage(
        input_tokens=int(getattr(usage, "input_tokens", 0) or 0),
        output_tokens=int(getattr(usage, "output_tokens", 0) or 0),
        cache_write_tokens=int(getattr(usage, "cache_creation_input_tokens", 0) or 0),
        cache_read_tokens=int(getattr(usage, "cache_read_input_tokens", 0) or 0),
    )
    measured.cost_usd = discount * (
        measured.input_tokens * settings.price_input_per_mtok
        + measured.output_tokens * settings.price_output_per_mtok
        + measured.cache_write_tokens * settings.price_cache_write_per_mtok
        + measured.cache_read_tokens * settings.price_cache_read_per_mtok
    ) / 1_000_000
    return measured
