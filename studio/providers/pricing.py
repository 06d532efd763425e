"""The price of one image per provider, so each image's cost is recorded when it is made.

Prices come from `ProviderSettings` (spec defaults: ComfyUI free, Modal $0.01,
Replicate $0.03) and are looked up by provider name; a provider not in the table
(the offline preview) costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from studio.providers.settings import PROVIDER_NAMES, ProviderSettings


@dataclass(frozen=True)
class PriceTable:
    usd_per_image: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> PriceTable:
        return cls(MappingProxyType({p: settings.price_usd(p) for p in PROVIDER_NAMES}))

    def cost(self, provider: str, images: int = 1) -> float:
        return round(self.usd_per_image.get(provider, 0.0) * images, 6)
