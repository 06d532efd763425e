"""Assemble the provider chain from `ProviderSettings` and the catalogue.

The order comes from LORA_INFERENCE_PROVIDER_ORDER when set, else from
PROVIDER_STRATEGY (spec: "Provider Chain Tuning") applied to the catalogue's entries;
providers that are not configured are left out. A first provider whose entry says it
does not fall back (ComfyUI with COMFYUI_FALLBACK_ON_ERROR=false) is alone. Under
cost-optimized a free provider is tried 1 + COST_OPTIMIZED_FREE_RETRIES times before a
billed one. The offline preview is used only when no real provider is configured.
Each entry builds its own provider, so an SDK (Replicate's, ~0.2 s to import) is
imported only when its provider is built.
"""

from __future__ import annotations

from studio.breaker import CircuitBreaker
from studio.ledger.jobs import ImageCallLedger
from studio.ledger.pricing import PriceTable
from studio.providers.base import ImageProvider
from studio.providers.catalogue import IMAGE_PROVIDERS, PROVIDER_NAMES, provider_entry
from studio.providers.chain import ProviderChain, ProviderPolicy
from studio.providers.preview import PreviewRenderer
from studio.providers.settings import ProviderSettings, ProviderStrategy
from studio.providers.slots import SlotFactory

#: the stand-in every chain without a configured provider uses (one per process, so
#: what it rendered can be counted)
PREVIEW = PreviewRenderer()


def strategy_order(settings: ProviderSettings) -> list[str]:
    """Every provider, in the order PROVIDER_STRATEGY gives (configured or not)."""
    if settings.strategy is ProviderStrategy.QUALITY:
        return [e.name for e in sorted(IMAGE_PROVIDERS, key=lambda e: e.quality_rank)]
    if settings.strategy is ProviderStrategy.COST:
        own = [e.name for e in IMAGE_PROVIDERS if e.own_hardware]
        paid = [e.name for e in IMAGE_PROVIDERS if not e.own_hardware]
        return [*own, *sorted(paid, key=settings.price_usd)]
    return list(PROVIDER_NAMES)


def provider_order(settings: ProviderSettings) -> list[str]:
    """The configured providers in the order the chain tries them."""
    if settings.provider_order:
        order = list(dict.fromkeys(settings.provider_order))
    else:
        order = strategy_order(settings)
    order = [name for name in order if settings.configured(name)]
    if order and not provider_entry(order[0]).falls_back(settings):
        order = order[:1]
    return order


def build_provider(name: str, settings: ProviderSettings) -> ImageProvider:
    if name not in PROVIDER_NAMES:
        raise ValueError(f"unknown provider {name!r}")
    return provider_entry(name).build(settings, settings.tuning(name))


def max_attempts(settings: ProviderSettings, name: str) -> int:
    """Attempts at one provider; the cost strategy retries the free one before paying."""
    attempts = settings.max_attempts(name)
    if settings.strategy is ProviderStrategy.COST and settings.price_usd(name) == 0:
        attempts = max(attempts, 1 + settings.cost_optimized_free_retries)
    return attempts


def policies(settings: ProviderSettings) -> dict[str, ProviderPolicy]:
    return {
        name: ProviderPolicy(
            max_attempts=max_attempts(settings, name),
            backoff_factor=settings.backoff_factor(name),
            backoff_unit=settings.backoff_unit_seconds,
            timeout=settings.timeout(name),
        )
        for name in PROVIDER_NAMES
    }


def caps(settings: ProviderSettings) -> dict[str, int]:
    return {name: settings.max_concurrent(name) for name in PROVIDER_NAMES}


def build_provider_chain(
    settings: ProviderSettings,
    *,
    slot: SlotFactory | None = None,
    fallback: ImageProvider | None = None,
    ledger: ImageCallLedger | None = None,
) -> ProviderChain:
    """`ledger`: where billed attempts are written and budgets checked (None: nowhere)."""
    providers = [build_provider(name, settings) for name in provider_order(settings)]
    if not providers and fallback is not None:
        providers = [fallback]
    breakers = {
        p.name: CircuitBreaker(
            settings.breaker_failure_threshold, settings.breaker_recovery_seconds
        )
        for p in providers
    }
    return ProviderChain(
        providers,
        policies(settings),
        speed=settings.strategy is ProviderStrategy.SPEED,
        speed_poll_seconds=settings.slot_poll_seconds,
        slot=slot,
        caps=caps(settings),
        breakers=breakers,
        secrets=settings.secret_values(),
        ledger=ledger,
        prices=PriceTable.from_settings(settings).usd_per_image,
    )


def build_image_chain(
    settings: ProviderSettings | None = None,
    *,
    slot: SlotFactory | None = None,
    ledger: ImageCallLedger | None = None,
) -> ProviderChain:
    """The batch's chain: the configured providers, or the offline preview when none is."""
    return build_provider_chain(
        settings or ProviderSettings(), slot=slot, fallback=PREVIEW, ledger=ledger
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
