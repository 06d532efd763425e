"""Replicate: one test per documented response variant (tests/emulators/README.md).

The official `replicate` client is pointed at the emulator by base URL; the billed
count is read at the emulator (created predictions), not from the client.
"""

from __future__ import annotations

import asyncio

import pytest
import replicate

from studio.providers.base import ProviderError
from studio.providers.replicate_flux import ReplicateFluxProvider
from tests.emulators.billing import RecordingJob
from tests.emulators.replicate_api import ReplicateEmulator
from tests.providers.conftest import REPLICATE_TOKEN

PNG = b"\x89PNG\r\n\x1a\n"
# the provider fixture is async (closed after each test): run in the fixtures' loop
pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
async def provider(replicate_api: ReplicateEmulator):
    client = ReplicateFluxProvider(
        REPLICATE_TOKEN, base_url=replicate_api.url, poll_interval=0.02, price_usd=0.03
    )
    yield client
    await client.aclose()


@pytest.mark.parametrize("form", ["list", "string"])
@pytest.mark.parametrize("scheme", ["http", "data"])
async def test_output_list_or_string_of_url_or_data_uri(
    replicate_api: ReplicateEmulator, provider, spec, avatar, form, scheme
):
    replicate_api.output_form = form
    replicate_api.output_scheme = scheme
    job = RecordingJob()
    image = await provider.generate(spec, avatar, job)
    assert image.data.startswith(PNG) and image.content_type == "image/png"
    assert image.data == next(iter(replicate_api.files.values()))
    assert replicate_api.billed_jobs == 1
    assert job.created_ids == [next(iter(replicate_api.predictions))]
    assert replicate_api.counters.requests("file") == (1 if scheme == "http" else 0)
    assert replicate_api.file_authorizations == ([None] if scheme == "http" else [])


async def test_sync_mode_answered_after_the_end_needs_no_poll(
    replicate_api: ReplicateEmulator, provider, spec, avatar
):
    replicate_api.output_scheme = "data"
    await provider.generate(spec, avatar)
    assert replicate_api.counters.requests("get") == 0


async def test_sync_mode_answered_before_the_end_is_polled(
    replicate_api: ReplicateEmulator, provider, spec, avatar
):
    replicate_api.behaviour.latency = (0.3, 0.3)
    replicate_api.sync_wait_cap = 0.05  # the held answer comes back while "processing"
    replicate_api.output_scheme = "data"
    job = RecordingJob()
    image = await provider.generate(spec, avatar, job)
    assert image.data.startswith(PNG)
    assert replicate_api.counters.requests("get") >= 1
    assert len(job.created_ids) == 1 and replicate_api.billed_jobs == 1


async def test_sync_answer_with_files_while_still_processing_is_read_at_once(
    replicate_api: ReplicateEmulator, provider, spec, avatar
):
    """Replicate answers "as soon as the files are all available", status "processing"."""
    replicate_api.files_before_end = 5.0  # it would say "succeeded" only 5 s later
    replicate_api.output_scheme = "data"
    image = await asyncio.wait_for(provider.generate(spec, avatar, RecordingJob()), 2)
    assert image.data.startswith(PNG)
    assert replicate_api.counters.requests("get") == 0
    assert next(iter(replicate_api.predictions.values()))["status"] == "processing"


@pytest.mark.parametrize("ending", ["failed", "canceled", "aborted"])
async def test_a_dead_prediction_fails_retryable_and_stays_billed(
    replicate_api: ReplicateEmulator, provider, spec, avatar, ending
):
    replicate_api.behaviour.latency = (0.5, 0.5)
    replicate_api.sync_wait_cap = 0.01  # answered while running: the end comes by polling
    replicate_api.end_next.append(ending)
    job = RecordingJob()
    with pytest.raises(ProviderError) as caught:
        await asyncio.wait_for(provider.generate(spec, avatar, job), 5)
    assert caught.value.retryable
    assert str(caught.value) == f"replicate: prediction {ending}"
    assert replicate_api.billed_jobs == 1 and len(job.created_ids) == 1


async def test_an_aborted_prediction_in_the_sync_answer_is_reported(
    replicate_api: ReplicateEmulator, provider, spec, avatar
):
    replicate_api.end_next.append("aborted")  # ends inside the held create answer
    with pytest.raises(ProviderError) as caught:
        await asyncio.wait_for(provider.generate(spec, avatar, RecordingJob()), 5)
    assert caught.value.retryable and "replicate:" in str(caught.value)


async def test_problem_details_name_title_and_detail(
    replicate_api: ReplicateEmulator, spec, avatar
):
    client = ReplicateFluxProvider(
        REPLICATE_TOKEN, base_url=replicate_api.url, model="nobody/missing-model"
    )
    job = RecordingJob()
    with pytest.raises(ProviderError) as caught:
        await client.generate(spec, avatar, job)
    assert not caught.value.retryable
    assert "HTTP 404: Not found - The requested resource could not be found." in str(caught.value)
    assert job.created_ids == [] and replicate_api.billed_jobs == 0
    await client.aclose()


async def test_429_with_retry_after_is_waited_out_then_billed_once(
    replicate_api: ReplicateEmulator, provider, spec, avatar
):
    replicate_api.behaviour.throttle_next = 1
    replicate_api.behaviour.retry_after = 0.05
    job = RecordingJob()
    await provider.generate(spec, avatar, job)
    assert replicate_api.counters.requests("throttled") == 1
    assert replicate_api.billed_jobs == 1 and len(job.created_ids) == 1


@pytest.mark.parametrize(
    ("output", "shape"),
    [
        ([], "empty list"),
        ("", "an empty string"),
        ("s3://bucket/out.png", "a string that is neither a URL nor a data URI"),
        (["not-a-url"], "list whose first item is a string that is neither"),
        (42, "a int"),
        ({"image": "https://x/y.png"}, "a dict"),
        (None, "no output"),
    ],
)
async def test_undocumented_output_fails_naming_provider_and_shape(
    replicate_api: ReplicateEmulator, provider, spec, avatar, output, shape
):
    replicate_api.output_override = output
    job = RecordingJob()
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar, job)
    assert str(caught.value).startswith(f"replicate: unexpected output shape: {shape}")
    assert caught.value.retryable
    assert len(job.created_ids) == 1 and replicate_api.billed_jobs == 1  # still counted


async def test_a_data_uri_that_is_not_base64_is_a_shape_error(
    replicate_api: ReplicateEmulator, provider, spec, avatar
):
    replicate_api.output_override = ["data:image/png;base64,@@not-base64@@"]
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar)
    assert "unexpected output shape: data URI that is not base64" in str(caught.value)


async def test_a_file_that_is_not_an_image_is_a_shape_error(
    replicate_api: ReplicateEmulator, provider, spec, avatar
):
    replicate_api.output_override = ["data:text/plain;base64,aGVsbG8="]
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar)
    assert "unexpected output shape: file that is not an image" in str(caught.value)


async def test_lost_download_is_recovered_by_id_without_a_second_billed_job(
    replicate_api: ReplicateEmulator, provider, spec, avatar
):
    replicate_api.file_fail_next = 1  # the prediction succeeds, its download fails once
    first = RecordingJob()
    with pytest.raises(ProviderError) as caught:
        await provider.generate(spec, avatar, first)
    assert caught.value.retryable and "output download answered HTTP 500" in str(caught.value)
    assert replicate_api.billed_jobs == 1

    retry = first.retry()
    assert retry.resume_job_id == first.created_ids[0]
    image = await provider.generate(spec, avatar, retry)
    assert image.data == replicate_api.files[retry.resume_job_id]
    assert replicate_api.billed_jobs == 1  # fetched by id, not bought again
    assert retry.created_ids == []
    assert replicate_api.counters.requests("create") == 1


async def test_resume_waits_for_a_prediction_still_running(
    replicate_api: ReplicateEmulator, provider, spec, avatar
):
    """A process restarted mid-poll: the prediction it created is still running."""
    replicate_api.behaviour.latency = (0.3, 0.3)
    sdk = replicate.Client(api_token=REPLICATE_TOKEN, base_url=replicate_api.url)
    running = await sdk.models.predictions.async_create(
        model=("black-forest-labs", "flux-dev-lora"), input={"prompt": "p"}
    )
    assert running.status in ("starting", "processing")
    image = await provider.generate(spec, avatar, RecordingJob(running.id))
    assert image.data == replicate_api.files[running.id]
    assert replicate_api.billed_jobs == 1


@pytest.mark.parametrize("how", ["gone", "data-removed", "failed", "canceled"])
async def test_resume_creates_a_new_job_only_when_the_old_one_cannot_deliver(
    replicate_api: ReplicateEmulator, provider, spec, avatar, how
):
    if how in ("failed", "canceled"):
        replicate_api.end_next.append(how)
    first = RecordingJob()
    if how == "gone":
        await provider.generate(spec, avatar, first)
        replicate_api.forget(first.created_ids[0])  # 404
    elif how == "data-removed":
        await provider.generate(spec, avatar, first)
        replicate_api.remove_data(first.created_ids[0])  # the one-hour clean-up
    else:
        with pytest.raises(ProviderError):
            await provider.generate(spec, avatar, first)
    retry = first.retry()
    image = await provider.generate(spec, avatar, retry)
    assert image.data.startswith(PNG)
    assert replicate_api.billed_jobs == 2
    assert len(retry.created_ids) == 1 and retry.created_ids[0] != retry.resume_job_id


async def test_resume_of_a_prediction_whose_file_expired_creates_a_new_one(
    replicate_api: ReplicateEmulator, provider, spec, avatar
):
    first = RecordingJob()
    await provider.generate(spec, avatar, first)
    replicate_api.files.pop(first.created_ids[0])  # the delivery URL now answers 404
    retry = first.retry()
    image = await provider.generate(spec, avatar, retry)
    assert image.data.startswith(PNG)
    assert replicate_api.billed_jobs == 2 and len(retry.created_ids) == 1


async def test_a_prediction_is_billed_once_under_sync_data_uris_for_ten_pieces(
    replicate_api: ReplicateEmulator, provider, avatar
):
    """The issue's headline: sync mode answering data: URIs delivers every piece."""
    from tests.providers.conftest import make_spec

    replicate_api.output_scheme = "data"
    jobs = [RecordingJob() for _ in range(10)]
    images = await asyncio.gather(
        *(provider.generate(make_spec(i), avatar, jobs[i]) for i in range(10))
    )
    assert all(i.data.startswith(PNG) for i in images)
    assert replicate_api.billed_jobs == 10
    assert all(len(j.created_ids) == 1 for j in jobs)


async def test_a_retry_after_a_bad_shape_buys_a_new_prediction_not_the_same_output(
    replicate_api: ReplicateEmulator, provider, spec, avatar
):
    replicate_api.output_override = []
    first = RecordingJob()
    with pytest.raises(ProviderError):
        await provider.generate(spec, avatar, first)
    replicate_api.output_override = ["data:image/png;base64,iVBORw0KGgo="]  # a PNG header
    retry = first.retry()
    image = await provider.generate(spec, avatar, retry)
    assert image.content_type == "image/png"
    assert replicate_api.billed_jobs == 2 and len(retry.created_ids) == 1


async def test_finish_at_most_holds_later_predictions_until_cleared(
    replicate_api: ReplicateEmulator, provider, spec, avatar
):
    """The `finish_at_most` switch: two predictions finish, the third waits (processing)
    until the switch is cleared, then finishes; each is billed once."""
    replicate_api.behaviour.finish_at_most = 2
    await provider.generate(spec, avatar)
    await provider.generate(spec, avatar)
    third = asyncio.create_task(provider.generate(spec, avatar))
    await asyncio.sleep(0.3)
    assert not third.done()
    assert [p["status"] for p in replicate_api.predictions.values()][-1] == "processing"
    replicate_api.behaviour.finish_at_most = None
    image = await asyncio.wait_for(third, 10)
    assert image.data.startswith(PNG)
    assert replicate_api.billed_jobs == 3
