"""ModalSDXLProvider against the Modal web-endpoint emulator."""

from __future__ import annotations

import asyncio

import pytest

from studio.providers.base import ProviderError
from studio.providers.modal_endpoint import ModalSDXLProvider
from tests.emulators.modal_endpoint import ModalEndpointEmulator
from tests.providers.conftest import MODAL_KEY, MODAL_SECRET


def provider_for(emulator: ModalEndpointEmulator, **kwargs) -> ModalSDXLProvider:
    return ModalSDXLProvider(
        emulator.url, token_id=MODAL_KEY, token_secret=MODAL_SECRET, **kwargs
    )


async def test_generates_with_proxy_auth_and_lora(modal: ModalEndpointEmulator, spec, avatar):
    provider = provider_for(modal, price_usd=0.01)
    image = await provider.generate(spec, avatar)
    assert image.data.startswith(b"\x89PNG")
    assert image.cost_usd == 0.01
    assert modal.bodies[0]["lora_url"] == avatar.lora_weights_url
    await provider.aclose()


async def test_303_to_result_url_is_followed(modal: ModalEndpointEmulator, spec, avatar):
    modal.redirect_after = 0.05
    modal.behaviour.hang = True  # until the POST and one GET were answered 303
    provider = provider_for(modal)
    task = asyncio.create_task(provider.generate(spec, avatar))
    while modal.counters.requests("redirect") < 2:
        await asyncio.sleep(0.01)
    modal.behaviour.hang = False
    image = await task
    assert image.data.startswith(b"\x89PNG")
    assert modal.counters.requests("get") >= 1
    assert modal.counters.requests("get") >= 1
    await provider.aclose()


async def test_wrong_credentials_are_not_retryable(modal: ModalEndpointEmulator, spec, avatar):
    provider = ModalSDXLProvider(modal.url, token_id=MODAL_KEY, token_secret="wrong-secret")
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar)
    assert not caught.value.retryable
    assert "401" in str(caught.value)
    assert "wrong-secret" not in str(caught.value)
    await provider.aclose()


async def test_function_failure_is_retryable(modal: ModalEndpointEmulator, spec, avatar):
    modal.behaviour.failure_rate = 1.0
    provider = provider_for(modal)
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar)
    assert caught.value.retryable
    assert "500" in str(caught.value)
    await provider.aclose()
