"""Modal web endpoint: one test per documented response variant (tests/emulators/README.md).

The emulator's billed-jobs counter counts function calls made (the POSTs Modal's proxy
let through to the function).
"""

from __future__ import annotations

import asyncio

import pytest

from studio.providers.base import ProviderError
from studio.providers.modal_endpoint import ModalSDXLProvider
from tests.emulators.billing import RecordingJob
from tests.emulators.modal_endpoint import ModalEndpointEmulator
from tests.providers.conftest import MODAL_KEY, MODAL_SECRET

PNG = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def provider(modal: ModalEndpointEmulator):
    client = ModalSDXLProvider(
        modal.url, token_id=MODAL_KEY, token_secret=MODAL_SECRET, price_usd=0.01
    )
    yield client
    await client.aclose()


async def test_200_with_the_image_is_billed_without_an_id(
    modal: ModalEndpointEmulator, provider, spec, avatar
):
    job = RecordingJob()
    image = await provider.generate(spec, avatar, job)
    assert image.data.startswith(PNG) and image.content_type == "image/png"
    assert job.created_ids == [None] and modal.billed_jobs == 1


async def test_303_to_a_result_url_that_303s_again_gives_the_call_id(
    modal: ModalEndpointEmulator, provider, spec, avatar
):
    modal.redirect_after = 0.05
    modal.behaviour.hang = True  # until the POST and one GET were answered 303
    job = RecordingJob()
    task = asyncio.create_task(provider.generate(spec, avatar, job))
    while modal.counters.requests("redirect") < 2:
        await asyncio.sleep(0.01)
    modal.behaviour.hang = False
    image = await task
    assert image.data.startswith(PNG)
    assert len(job.created_ids) == 1 and job.created_ids[0].startswith("fc-")
    assert modal.billed_jobs == 1


async def test_too_many_303s_fail_retryable_and_stay_billed(
    modal: ModalEndpointEmulator, spec, avatar
):
    modal.redirect_after = 0.01
    modal.behaviour.latency = (1.0, 1.0)
    provider = ModalSDXLProvider(
        modal.url, token_id=MODAL_KEY, token_secret=MODAL_SECRET, max_redirects=2
    )
    job = RecordingJob()
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar, job)
    assert caught.value.retryable and "after 2 303s" in str(caught.value)
    assert len(job.created_ids) == 1 and modal.billed_jobs == 1
    await provider.aclose()


async def test_lost_result_is_recovered_by_call_id_without_a_second_call(
    modal: ModalEndpointEmulator, provider, spec, avatar
):
    modal.redirect_after = 0.02
    modal.behaviour.latency = (0.3, 0.3)
    modal.result_fail_next = 1  # the GET of the result URL fails after the 303
    first = RecordingJob()
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar, first)
    assert caught.value.retryable and "HTTP 502" in str(caught.value)
    retry = first.retry()
    assert retry.resume_job_id and retry.resume_job_id.startswith("fc-")
    image = await provider.generate(spec, avatar, retry)
    assert image.data.startswith(PNG)
    assert modal.billed_jobs == 1 and retry.created_ids == []
    assert modal.counters.requests("post") == 1


@pytest.mark.parametrize("how", ["expired", "failed"])
async def test_resume_makes_a_new_call_only_when_the_old_one_cannot_deliver(
    modal: ModalEndpointEmulator, provider, spec, avatar, how
):
    modal.redirect_after = 0.02
    modal.behaviour.latency = (0.3, 0.3)
    first = RecordingJob()
    if how == "failed":
        modal.behaviour.failure_rate = 1.0
        with pytest.raises(ProviderError):
            await provider.generate(spec, avatar, first)
        modal.behaviour.failure_rate = 0.0
    else:
        modal.result_fail_next = 1
        with pytest.raises(ProviderError):
            await provider.generate(spec, avatar, first)
        modal.forget_calls()
    retry = first.retry()
    image = await provider.generate(spec, avatar, retry)
    assert image.data.startswith(PNG)
    assert modal.billed_jobs == 2 and len(retry.created_ids) == 1


async def test_function_failure_500_is_retryable_and_billed(
    modal: ModalEndpointEmulator, provider, spec, avatar
):
    modal.behaviour.failure_rate = 1.0
    job = RecordingJob()
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar, job)
    assert caught.value.retryable and "HTTP 500" in str(caught.value)
    assert job.created_ids == [None] and modal.billed_jobs == 1


@pytest.mark.parametrize(
    ("status", "retryable"), [(503, True), (401, False), (404, False), (422, False)]
)
async def test_front_door_errors_are_not_billed(
    modal: ModalEndpointEmulator, provider, spec, avatar, status, retryable
):
    modal.fail_next(status)
    job = RecordingJob()
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar, job)
    assert caught.value.retryable is retryable and f"HTTP {status}" in str(caught.value)
    assert job.created_ids == [] and modal.billed_jobs == 0


async def test_an_avatar_without_lora_is_refused_before_any_call(
    modal: ModalEndpointEmulator, provider, spec, avatar
):
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar.model_copy(update={"lora_weights_url": None}))
    assert not caught.value.retryable  # refused before any request
    assert modal.counters.requests("post") == 0


async def test_image_bytes_declared_as_octet_stream_are_accepted(
    modal: ModalEndpointEmulator, provider, spec, avatar
):
    modal.content_type = "application/octet-stream"
    image = await provider.generate(spec, avatar)
    assert image.content_type == "image/png"


@pytest.mark.parametrize(
    ("body", "content_type", "shape"),
    [
        (b"", "image/png", "empty body"),
        (b'{"error": "oops"}', "application/json", "application/json body, not an image"),
        (b"<html>hi</html>", "text/html", "text/html body, not an image"),
    ],
)
async def test_undocumented_200_body_fails_naming_provider_and_shape(
    modal: ModalEndpointEmulator, provider, spec, avatar, body, content_type, shape
):
    modal.body_override, modal.content_type = body, content_type
    job = RecordingJob()
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar, job)
    assert str(caught.value) == f"modal: unexpected output shape: {shape}"
    assert caught.value.retryable
    assert job.created_ids == [None] and modal.billed_jobs == 1


async def test_unreachable_endpoint_is_not_billed(spec, avatar):
    provider = ModalSDXLProvider("http://127.0.0.1:9/", token_id="k", token_secret="s")
    job = RecordingJob()
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar, job)
    assert caught.value.retryable and job.created_ids == []
    await provider.aclose()


async def test_a_retry_after_a_bad_body_makes_a_new_call(
    modal: ModalEndpointEmulator, provider, spec, avatar
):
    modal.redirect_after = 0.02
    modal.behaviour.latency = (0.3, 0.3)  # answered by a 303: the call id is known
    modal.body_override, modal.content_type = b"<html></html>", "text/html"
    first = RecordingJob()
    with pytest.raises(ProviderError):
        await provider.generate(spec, avatar, first)
    assert first.created_ids[0].startswith("fc-")
    modal.body_override, modal.content_type = None, "image/png"
    retry = first.retry()
    image = await provider.generate(spec, avatar, retry)
    assert image.data.startswith(PNG)
    assert modal.billed_jobs == 2 and len(retry.created_ids) == 1
