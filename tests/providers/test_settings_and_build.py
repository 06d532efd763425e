"""ProviderSettings from the spec's env vars, and the chain order they produce."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from studio.ledger.pricing import PriceTable
from studio.providers.build import build_provider_chain, provider_order
from studio.providers.settings import ProviderSettings, ProviderStrategy

ALL = {
    "COMFYUI_ENABLED": "true",
    "MODAL_SDXL_ENDPOINT": "http://127.0.0.1:1/",
    "REPLICATE_API_TOKEN": "r8_settings_secret",
}


@pytest.fixture
def env(monkeypatch):
    for key in ("LORA_INFERENCE_PROVIDER_ORDER", "PROVIDER_STRATEGY", *ALL):
        monkeypatch.delenv(key, raising=False)
    for key, value in ALL.items():
        monkeypatch.setenv(key, value)
    return monkeypatch


def test_spec_defaults(env):
    settings = ProviderSettings(_env_file=None)
    assert [settings.max_concurrent(p) for p in ("comfyui", "modal", "replicate")] == [10, 3, 5]
    assert [settings.max_attempts(p) for p in ("comfyui", "modal", "replicate")] == [1, 3, 2]
    assert settings.backoff_factor("modal") == 1.5 and settings.backoff_factor("replicate") == 2.0
    assert settings.timeout("modal") == 300 and settings.timeout("replicate") == 60
    assert settings.breaker_failure_threshold == 5 and settings.breaker_recovery_seconds == 60
    assert PriceTable.from_settings(settings).cost("modal", 50) == pytest.approx(0.5)
    assert "r8_settings_secret" not in repr(settings)


def test_default_order(env):
    assert provider_order(ProviderSettings(_env_file=None)) == ["comfyui", "modal", "replicate"]


def test_explicit_order_wins(env):
    env.setenv("LORA_INFERENCE_PROVIDER_ORDER", "modal, replicate")
    env.setenv("PROVIDER_STRATEGY", "cost-optimized")
    assert provider_order(ProviderSettings(_env_file=None)) == ["modal", "replicate"]


@pytest.mark.parametrize(
    ("strategy", "order"),
    [
        ("quality", ["modal", "replicate", "comfyui"]),
        ("cost-optimized", ["comfyui", "modal", "replicate"]),
        ("speed", ["comfyui", "modal", "replicate"]),
    ],
)
def test_strategy_orders(env, strategy, order):
    env.setenv("PROVIDER_STRATEGY", strategy)
    settings = ProviderSettings(_env_file=None)
    assert provider_order(settings) == order
    assert build_provider_chain(settings).speed is (strategy == "speed")


def test_cost_strategy_puts_the_cheapest_paid_provider_next(env):
    env.setenv("PROVIDER_STRATEGY", "cost")
    env.setenv("REPLICATE_PRICE_USD", "0.005")
    settings = ProviderSettings(_env_file=None)
    assert settings.strategy is ProviderStrategy.COST
    assert provider_order(settings) == ["comfyui", "replicate", "modal"]


def test_unconfigured_providers_are_left_out_and_fallback_used(env):
    for key in ALL:
        env.delenv(key)
    settings = ProviderSettings(_env_file=None)
    assert provider_order(settings) == []

    class Preview:
        name = "preview"
        stand_in = True

    assert build_provider_chain(settings, fallback=Preview()).names == ["preview"]


def test_comfyui_without_fallback_is_alone(env):
    env.setenv("COMFYUI_FALLBACK_ON_ERROR", "false")
    assert provider_order(ProviderSettings(_env_file=None)) == ["comfyui"]


def test_unknown_provider_in_order_is_rejected(env):
    env.setenv("LORA_INFERENCE_PROVIDER_ORDER", "modal,dalle")
    with pytest.raises(ValidationError):
        ProviderSettings(_env_file=None)
