"""Assemble the provider chain from `ProviderSettings`.

The order comes from LORA_INFERENCE_PROVIDER_ORDER when set, else from
PROVIDER_STRATEGY (spec: "Provider Chain Tuning"); providers that are not configured
are left out. With COMFYUI_FALLBACK_ON_ERROR=false a ComfyUI failure is final. Under
cost-optimized the free provider is tried 1 + COST_OPTIMIZED_FREE_RETRIES times before a
billed one.
`fallback` (the offline preview) is used only when no real provider is configured.
The Replicate provider (and with it the `replicate` SDK, ~0.2 s to import) is imported
only when it is built, so a chain without Replicate never pays for it.
"""

from __future__ import annotations

from studio.breaker import CircuitBreaker
from studio.ledger.jobs import ImageCallLedger
from studio.ledger.pricing import PriceTable
from studio.providers.base import ImageProvider
from studio.providers.chain import ProviderChain, ProviderPolicy
from studio.providers.comfyui import ComfyUIProvider
from studio.providers.modal_endpoint import ModalSDXLProvider
from studio.providers.settings import PROVIDER_NAMES, ProviderSettings, ProviderStrategy
from studio.providers.slots import SlotFactory

DEFAULT_ORDER: tuple[str, ...] = ("comfyui", "modal", "replicate")


def provider_order(settings: ProviderSettings) -> list[str]:
    """The configured providers in the order the chain tries them."""
    if settings.provider_order:
        order = list(dict.fromkeys(settings.provider_order))
    elif settings.strategy is ProviderStrategy.QUALITY:
        order = ["modal", "replicate", "comfyui"]
    elif settings.strategy is ProviderStrategy.COST:
        paid = sorted(("modal", "replicate"), key=settings.price_usd)
        order = ["comfyui", *paid]
    else:
        order = list(DEFAULT_ORDER)
    order = [name for name in order if settings.configured(name)]
    if order and order[0] == "comfyui" and not settings.comfyui_fallback_on_error:
        order = ["comfyui"]
    return order


def build_provider(name: str, settings: ProviderSettings) -> ImageProvider:
    if name == "comfyui":
        return ComfyUIProvider(
            settings.comfyui_endpoint,
            price_usd=settings.price_usd(name),
            checkpoint=settings.comfyui_checkpoint,
            poll_interval=settings.comfyui_poll_interval,
        )
    if name == "modal":
        assert settings.modal_sdxl_endpoint
        return ModalSDXLProvider(
            settings.modal_sdxl_endpoint,
            token_id=_plain(settings.modal_token_id),
            token_secret=_plain(settings.modal_token_secret),
            price_usd=settings.price_usd(name),
            timeout=settings.timeout(name),
        )
    if name == "replicate":
        token = _plain(settings.replicate_api_token)
        assert token
        from studio.providers.replicate_flux import ReplicateFluxProvider

        return ReplicateFluxProvider(
            token,
            base_url=settings.replicate_base_url,
            model=settings.replicate_model,
            lora_input=settings.replicate_lora_input,
            price_usd=settings.price_usd(name),
            poll_interval=settings.replicate_poll_interval,
            throttle_retries=settings.replicate_throttle_retries,
            wait_seconds=int(min(60, settings.timeout(name))),
        )
    raise ValueError(f"unknown provider {name!r}")


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


def _plain(secret: object) -> str | None:
    return secret.get_secret_value() if secret is not None else None  # type: ignore[attr-defined]
