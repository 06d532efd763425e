"""Which image providers a batch uses, in which order.

The chain is built from `ProviderSettings` (the spec's env vars): the configured real
providers in the order LORA_INFERENCE_PROVIDER_ORDER / PROVIDER_STRATEGY give. With
nothing configured, the offline preview renderer is the only provider.
"""

from __future__ import annotations

from studio.ledger.jobs import ImageCallLedger
from studio.providers.build import build_provider_chain, provider_order
from studio.providers.chain import ChainExhausted, ChainResult, ProviderChain
from studio.providers.preview import PreviewRenderer
from studio.providers.settings import PROVIDER_NAMES, ProviderSettings
from studio.providers.slots import SlotFactory

__all__ = ["ChainExhausted", "ChainResult", "ProviderChain", "build_image_chain"]

_PREVIEW = PreviewRenderer()


def build_image_chain(
    settings: ProviderSettings | None = None,
    *,
    slot: SlotFactory | None = None,
    ledger: ImageCallLedger | None = None,
) -> ProviderChain:
    return build_provider_chain(
        settings or ProviderSettings(), slot=slot, fallback=_PREVIEW, ledger=ledger
    )


def provider_availability(settings: ProviderSettings | None = None) -> dict[str, dict[str, object]]:
    """Which image providers are configured, their place in the chain, cap and price."""
    s = settings or ProviderSettings()
    order = provider_order(s)
    report: dict[str, dict[str, object]] = {
        name: {
            "available": name in order,
            "configured": s.configured(name),
            "position": order.index(name) + 1 if name in order else None,
            "max_concurrent": s.max_concurrent(name),
            "price_usd": s.price_usd(name),
            "stand_in": False,
        }
        for name in PROVIDER_NAMES
    }
    report["preview"] = {"available": not order, "stand_in": True}
    report["strategy"] = {"name": s.strategy.value, "order": order or ["preview"]}
    return report
