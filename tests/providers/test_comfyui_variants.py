"""ComfyUI: one test per documented response variant (tests/emulators/README.md).

ComfyUI is free; the emulator's billed-jobs counter counts executed prompts (GPU runs).
"""

from __future__ import annotations

import asyncio

import pytest

from studio.providers.base import ProviderError
from studio.providers.comfyui import ComfyUIProvider
from tests.emulators.billing import RecordingJob
from tests.emulators.comfyui import ComfyUIEmulator

PNG = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def provider(comfyui: ComfyUIEmulator):
    client = ComfyUIProvider(comfyui.url, poll_interval=0.01)
    yield client
    await client.aclose()


@pytest.mark.parametrize("websocket", [True, False])
@pytest.mark.parametrize(("kind", "subfolder"), [("output", ""), ("temp", "studio/previews")])
async def test_view_is_asked_with_the_history_subfolder_and_type(
    comfyui: ComfyUIEmulator, provider, spec, avatar, websocket, kind, subfolder
):
    comfyui.websocket_enabled = websocket
    comfyui.image_type, comfyui.subfolder = kind, subfolder
    job = RecordingJob()
    image = await provider.generate(spec, avatar, job)
    assert image.data == next(iter(comfyui.files.values()))
    assert job.created_ids == [next(iter(comfyui.history))]
    assert comfyui.billed_jobs == 1


async def test_progress_events_and_binary_previews_are_skipped(
    comfyui: ComfyUIEmulator, provider, spec, avatar
):
    comfyui.previews = True
    image = await provider.generate(spec, avatar)
    assert image.data.startswith(PNG)
    assert comfyui.counters.requests("history") == 0  # "executed" carried the outputs


@pytest.mark.parametrize("legacy", [False, True])
async def test_a_prompt_served_from_cache_delivers_its_image(
    comfyui: ComfyUIEmulator, provider, spec, avatar, legacy
):
    """execution_cached lists every node; current servers still send "executed" with the
    cached outputs (execution.py `execute`: a cached node replays its UI output), older
    ones sent none and only /history has the image."""
    comfyui.cached_next = 1
    comfyui.legacy_cached = legacy
    image = await provider.generate(spec, avatar)
    assert image.data.startswith(PNG)
    assert (comfyui.counters.requests("history") >= 1) is legacy


@pytest.mark.parametrize("websocket", [True, False])
async def test_an_interrupted_prompt_fails_retryable(
    comfyui: ComfyUIEmulator, provider, spec, avatar, websocket
):
    comfyui.websocket_enabled = websocket
    comfyui.interrupt_next = 1
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar)
    assert caught.value.retryable and "interrupted" in str(caught.value)


async def test_history_without_status_from_older_servers(
    comfyui: ComfyUIEmulator, provider, spec, avatar
):
    comfyui.websocket_enabled = False
    comfyui.legacy_history = True
    image = await provider.generate(spec, avatar)
    assert image.data.startswith(PNG)


@pytest.mark.parametrize("websocket", [True, False])
@pytest.mark.parametrize(
    ("outputs", "shape"),
    [
        ({}, "history entry without images"),
        ({"9": {"images": []}}, "history entry without images"),
        ({"9": {"text": ["hello"]}}, "history entry without images"),
        ({"9": {"images": [{"subfolder": "", "type": "output"}]}}, "image without a filename"),
    ],
)
async def test_undocumented_history_fails_naming_provider_and_shape(
    comfyui: ComfyUIEmulator, provider, spec, avatar, websocket, outputs, shape
):
    comfyui.websocket_enabled = websocket
    comfyui.outputs_override = outputs
    job = RecordingJob()
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar, job)
    assert str(caught.value) == f"comfyui: unexpected output shape: {shape}"
    assert caught.value.retryable
    assert len(job.created_ids) == 1 and comfyui.billed_jobs == 1


async def test_lost_view_is_recovered_from_history_without_a_second_run(
    comfyui: ComfyUIEmulator, provider, spec, avatar
):
    comfyui.view_fail_next = 1
    first = RecordingJob()
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar, first)
    assert caught.value.retryable and "view answered HTTP 500" in str(caught.value)
    retry = first.retry()
    image = await provider.generate(spec, avatar, retry)
    assert image.data.startswith(PNG)
    assert comfyui.billed_jobs == 1 and comfyui.counters.requests("prompt") == 1
    assert retry.created_ids == []


async def test_resume_waits_for_a_prompt_still_in_the_queue(
    comfyui: ComfyUIEmulator, provider, spec, avatar
):
    comfyui.behaviour.latency = (0.3, 0.3)
    first = RecordingJob()
    task = asyncio.create_task(provider.generate(spec, avatar, first))
    while not first.created_ids:
        await asyncio.sleep(0.01)
    image = await provider.generate(spec, avatar, first.retry())  # a second process
    assert image.data.startswith(PNG)
    await task
    assert comfyui.billed_jobs == 1


@pytest.mark.parametrize("how", ["restarted", "failed"])
async def test_resume_requeues_only_a_prompt_comfyui_no_longer_has(
    comfyui: ComfyUIEmulator, provider, spec, avatar, how
):
    first = RecordingJob()
    if how == "failed":
        comfyui.behaviour.failure_rate = 1.0
        with pytest.raises(ProviderError):
            await provider.generate(spec, avatar, first)
        comfyui.behaviour.failure_rate = 0.0
    else:
        await provider.generate(spec, avatar, first)
        comfyui.restart()
    retry = first.retry()
    image = await provider.generate(spec, avatar, retry)
    assert image.data.startswith(PNG)
    assert comfyui.billed_jobs == 2 and len(retry.created_ids) == 1


async def test_node_errors_are_not_billed(comfyui: ComfyUIEmulator, provider, spec, avatar):
    comfyui.behaviour.extra["missing_loras"] = ["nova_v2.safetensors"]
    job = RecordingJob()
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar, job)
    assert not caught.value.retryable and "node_errors" not in str(caught.value)
    assert "LoraLoader: lora_name" in str(caught.value)
    assert job.created_ids == [] and comfyui.billed_jobs == 0


@pytest.mark.parametrize("answer", [{}, {"prompt_id": None, "number": 0}, ["x"]])
async def test_a_prompt_answer_without_prompt_id_is_a_shape_error(
    comfyui: ComfyUIEmulator, provider, spec, avatar, answer
):
    comfyui.prompt_answer_override = answer
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar)
    assert caught.value.retryable
    assert str(caught.value) == (
        "comfyui: unexpected output shape: /prompt answer without a prompt_id"
    )


async def test_a_retry_after_a_history_without_images_queues_a_new_prompt(
    comfyui: ComfyUIEmulator, provider, spec, avatar
):
    comfyui.outputs_override = {}
    first = RecordingJob()
    with pytest.raises(ProviderError):
        await provider.generate(spec, avatar, first)
    comfyui.outputs_override = None
    retry = first.retry()
    image = await provider.generate(spec, avatar, retry)
    assert image.data.startswith(PNG)
    assert comfyui.billed_jobs == 2 and len(retry.created_ids) == 1
