"""ComfyUIProvider against the ComfyUI emulator's real HTTP API."""

from __future__ import annotations

import pytest

from studio.providers.base import ProviderError
from studio.providers.comfyui import ComfyUIProvider, lora_file_name
from tests.emulators.comfyui import ComfyUIEmulator

PNG = b"\x89PNG\r\n\x1a\n"


async def test_generates_png_through_prompt_history_view(comfyui: ComfyUIEmulator, spec, avatar):
    provider = ComfyUIProvider(comfyui.url, poll_interval=0.01)
    image = await provider.generate(spec, avatar)
    assert image.data.startswith(PNG)
    assert image.cost_usd == 0.0
    graph = comfyui.prompts[0]
    lora = next(n for n in graph.values() if n["class_type"] == "LoraLoader")
    assert lora["inputs"]["lora_name"] == "nova_v2.safetensors"
    assert comfyui.counters.requests("view") == 1
    await provider.aclose()


async def test_completion_comes_from_the_event_stream(comfyui: ComfyUIEmulator, spec, avatar):
    comfyui.behaviour.latency = (0.2, 0.2)
    provider = ComfyUIProvider(comfyui.url, poll_interval=0.02)
    await provider.generate(spec, avatar)
    assert comfyui.counters.requests("ws") == 1
    assert comfyui.counters.requests("history") == 0  # the outputs came with the events
    await provider.aclose()


async def test_without_the_stream_history_is_polled_until_done(
    comfyui: ComfyUIEmulator, spec, avatar
):
    comfyui.websocket_enabled = False
    comfyui.behaviour.latency = (0.2, 0.2)
    provider = ComfyUIProvider(comfyui.url, poll_interval=0.02)
    image = await provider.generate(spec, avatar)
    assert image.data.startswith(PNG)
    assert comfyui.counters.requests("history") > 1
    await provider.aclose()


async def test_execution_error_without_the_stream_is_retryable(
    comfyui: ComfyUIEmulator, spec, avatar
):
    comfyui.websocket_enabled = False
    comfyui.behaviour.failure_rate = 1.0
    provider = ComfyUIProvider(comfyui.url, poll_interval=0.01)
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar)
    assert caught.value.retryable and "KSampler" in str(caught.value)
    await provider.aclose()


async def test_node_errors_are_not_retryable(comfyui: ComfyUIEmulator, spec, avatar):
    comfyui.behaviour.extra["missing_loras"] = ["nova_v2.safetensors"]
    provider = ComfyUIProvider(comfyui.url)
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar)
    assert not caught.value.retryable
    assert "prompt_outputs_failed_validation" in str(caught.value)
    assert "LoraLoader" in str(caught.value)
    await provider.aclose()


async def test_execution_error_is_retryable(comfyui: ComfyUIEmulator, spec, avatar):
    comfyui.behaviour.failure_rate = 1.0
    provider = ComfyUIProvider(comfyui.url, poll_interval=0.01)
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar)
    assert caught.value.retryable
    assert "execution error" in str(caught.value)
    await provider.aclose()


async def test_unreachable_server_is_a_retryable_error(spec, avatar):
    provider = ComfyUIProvider("http://127.0.0.1:9")
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar)
    assert caught.value.retryable
    await provider.aclose()


async def test_avatar_without_lora_is_refused(comfyui: ComfyUIEmulator, spec, avatar):
    provider = ComfyUIProvider(comfyui.url)
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar.model_copy(update={"lora_weights_url": None}))
    assert not caught.value.retryable
    assert comfyui.counters.requests("prompt") == 0
    await provider.aclose()


def test_lora_file_name_from_url():
    assert lora_file_name("https://x/y/nova.safetensors?sig=1") == "nova.safetensors"
    assert lora_file_name("s3://bucket/nova") == "nova.safetensors"
