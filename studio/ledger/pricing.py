"""The one price table: what each provider bills per call, with the source of each figure.

- image: per image, declared with each provider (`ProviderEntry.tuning.price_usd` and
  `.price_source` in the provider's module, listed in `studio/providers/catalogue.py`);
  `<NAME>_PRICE_USD` overrides it (COMFYUI_PRICE_USD $0, MODAL_PRICE_USD $0.01,
  REPLICATE_PRICE_USD $0.03 by default).
- hook, Claude Haiku 4.5: $1.00 input, $5.00 output, $1.25 cache write (5 min), $0.10
  cache read per MTok; ANTHROPIC_PRICE_{INPUT,OUTPUT,CACHE_WRITE,CACHE_READ}_PER_MTOK;
  Anthropic's pricing page (cache write 1.25x, cache read 0.1x input).
- hook, Message Batches: x0.5 of the above; HOOK_MESSAGE_BATCH_DISCOUNT; Anthropic
  ("Batch processing: 50% discount").
- moderation, OpenAI: $0 billed (OpenAI lists the moderation endpoint as free); the
  spec's planning figure $0.001 per call (MODERATION_PRICE_PER_CALL_USD, "$0.05 of
  safety per 50 pieces") is kept beside it as `estimate_usd`, never summed as spent.

Image prices are read from `ProviderSettings`, hook prices from `HookSettings` (each
domain's settings read their own variables); this module is the one place that says
what a call costs. A hook call is priced from the usage the API reports
(`studio.hooks.pricing.usage_cost`); before the call only an upper estimate is known,
which is what a budget reserves. Moderation is recorded at $0
with the spec's figure kept apart as `estimate_usd`, so batch cost is what was billed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from studio.hooks.settings import HookSettings
from studio.moderation.settings import ModerationSettings
from studio.providers.catalogue import IMAGE_PROVIDERS, PROVIDER_NAMES
from studio.providers.settings import ProviderSettings

#: the environment variable of every price, for messages naming what to fix
PRICE_VARIABLES: tuple[str, ...] = (
    *(entry.variable("price_usd") for entry in IMAGE_PROVIDERS),
    "ANTHROPIC_PRICE_INPUT_PER_MTOK",
    "ANTHROPIC_PRICE_OUTPUT_PER_MTOK",
    "ANTHROPIC_PRICE_CACHE_WRITE_PER_MTOK",
    "ANTHROPIC_PRICE_CACHE_READ_PER_MTOK",
    "MODERATION_PRICE_PER_CALL_USD",
)
#: what the moderation endpoint bills (OpenAI lists it as free)
MODERATION_BILLED_USD = 0.0
#: characters per token for the pre-call estimate of a hook call (the API reports usage after)
_CHARS_PER_TOKEN = 3.0


@dataclass(frozen=True)
class PriceTable:
    usd_per_image: Mapping[str, float] = field(default_factory=dict)
    hook_input_per_mtok: float = 1.00
    hook_output_per_mtok: float = 5.00
    moderation_estimate_usd: float = 0.001

    @classmethod
    def from_settings(
        cls,
        providers: ProviderSettings | None = None,
        hooks: HookSettings | None = None,
        moderation: ModerationSettings | None = None,
    ) -> PriceTable:
        providers = providers or ProviderSettings()
        hooks = hooks or HookSettings()
        moderation = moderation or ModerationSettings()
        return cls(
            usd_per_image=MappingProxyType({p: providers.price_usd(p) for p in PROVIDER_NAMES}),
            hook_input_per_mtok=hooks.price_input_per_mtok,
            hook_output_per_mtok=hooks.price_output_per_mtok,
            moderation_estimate_usd=moderation.price_per_call_usd,
        )

    def image(self, provider: str) -> float:
        """One image at `provider`; a provider not in the table (the preview) is free."""
        return float(self.usd_per_image.get(provider, 0.0))

    def cost(self, provider: str, images: int = 1) -> float:
        return round(self.image(provider) * images, 6)


def hook_call_estimate(
    params: Mapping[str, Any], hooks: HookSettings, discount: float = 1.0
) -> float:
    """An upper estimate of one Messages call before it is made, for a budget reservation.

    Input is counted from the request's size at a conservative 3 characters a token and
    priced as uncached input; output at the request's max_tokens. The row is settled at
    the price of the usage the API reports.
    """
    size = len(json.dumps(params, default=str))
    input_tokens = size / _CHARS_PER_TOKEN
    output_tokens = float(params.get("max_tokens") or hooks.max_output_tokens)
    return discount * (
        input_tokens * hooks.price_input_per_mtok + output_tokens * hooks.price_output_per_mtok
    ) / 1_000_000
