"""ReplicateFluxProvider through the official client against the Replicate emulator."""

from __future__ import annotations

import logging

import pytest

from studio.providers.base import ProviderError
from studio.providers.replicate_flux import ReplicateFluxProvider, retry_after_seconds
from tests.emulators.replicate_api import ReplicateEmulator
from tests.providers.conftest import REPLICATE_TOKEN


def provider_for(emulator: ReplicateEmulator, token: str = REPLICATE_TOKEN, **kwargs):
    return ReplicateFluxProvider(token, base_url=emulator.url, poll_interval=0.02, **kwargs)


async def test_generates_with_lora_input(replicate_api: ReplicateEmulator, spec, avatar):
    provider = provider_for(replicate_api, price_usd=0.03)
    image = await provider.generate(spec, avatar)
    assert image.data.startswith(b"\x89PNG")
    assert image.cost_usd == 0.03
    prediction = next(iter(replicate_api.predictions.values()))
    assert prediction["input"]["lora_weights"] == avatar.lora_weights_url
    assert prediction["model"] == "black-forest-labs/flux-dev-lora"
    await provider.aclose()


async def test_slow_prediction_is_polled(replicate_api: ReplicateEmulator, spec, avatar):
    replicate_api.behaviour.latency = (1.3, 1.3)
    provider = provider_for(replicate_api, wait_seconds=1)
    image = await provider.generate(spec, avatar)
    assert image.data.startswith(b"\x89PNG")
    assert replicate_api.counters.requests("get") >= 1
    await provider.aclose()


async def test_429_on_create_is_retried_after_retry_after(
    replicate_api: ReplicateEmulator, spec, avatar, caplog
):
    replicate_api.behaviour.throttle_next = 2
    replicate_api.behaviour.retry_after = 0.1
    provider = provider_for(replicate_api)
    with caplog.at_level(logging.INFO, logger="studio.providers"):
        image = await provider.generate(spec, avatar)
    assert image.data.startswith(b"\x89PNG")
    assert replicate_api.counters.requests("throttled") == 2
    assert replicate_api.counters.requests("create") == 3
    throttled = [r.getMessage() for r in caplog.records if "provider_throttled" in r.getMessage()]
    assert len(throttled) == 2 and "retry_after=0.10s" in throttled[0]
    await provider.aclose()


async def test_429_beyond_the_budget_fails_retryable(
    replicate_api: ReplicateEmulator, spec, avatar
):
    replicate_api.behaviour.throttle_next = 10
    replicate_api.behaviour.retry_after = 0.01
    provider = provider_for(replicate_api, throttle_retries=2)
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar)
    assert caught.value.retryable and "429" in str(caught.value)
    assert replicate_api.counters.requests("create") == 3
    await provider.aclose()


async def test_bad_token_is_not_retryable_and_not_echoed(
    replicate_api: ReplicateEmulator, spec, avatar
):
    provider = provider_for(replicate_api, token="r8_wrong_token_value")
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar)
    assert not caught.value.retryable and "401" in str(caught.value)
    assert "r8_wrong_token_value" not in str(caught.value)
    await provider.aclose()


async def test_failed_prediction_is_retryable(replicate_api: ReplicateEmulator, spec, avatar):
    replicate_api.behaviour.failure_rate = 1.0
    provider = provider_for(replicate_api)
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar)
    assert caught.value.retryable and "failed" in str(caught.value)
    await provider.aclose()


async def test_unknown_model_is_not_retryable(replicate_api: ReplicateEmulator, spec, avatar):
    provider = provider_for(replicate_api, model="someone/missing-model")
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar)
    assert not caught.value.retryable and "404" in str(caught.value)
    await provider.aclose()


def test_retry_after_parsing():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds(None, default=2.0) == 2.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_a_create_refused_again_waits_longer_each_time():
    """Retry-After first, then doubled per repeat (capped): an excess create holding a
    fleet slot does not ask every Retry-After while the provider stays full (issue 20)."""
    from studio.providers.base import BACKOFF_CAP, backed_off

    assert [backed_off(1.0, n) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]
    assert backed_off(0.1, 1) == 0.1 and backed_off(0.1, 2) == 0.2
    assert BACKOFF_CAP == 8
