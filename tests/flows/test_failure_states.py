"""Failures show where Prefect users look: a refused request ends "Refused" (not the
failed-batch alert's Failed), a chunk with failed pieces ends Failed yet hands over
its images, a batch below min_success_ratio ends Failed saying what failed where,
writes [BATCH FAILED] and emits studio.batch.failed."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.events.filters import EventFilter, EventResourceFilter
from prefect.logging.handlers import APILogHandler
from prefect.states import Completed, Crashed, Failed
from sqlalchemy import select

from flows.content_batch import BatchBelowMinimum, _chunk_items, content_batch
from flows.image_chunk import chunk_state
from studio.batch_verdict import failure_summary, meets_minimum
from studio.db.engine import session_scope
from studio.db.models import Batch, ContentPiece
from studio.outcomes import batch_status
from studio.request import BatchRequestError
from studio.types import GeneratedImage, ImageFailure, PieceOutcome, PieceSpec, PieceStatus
from tests.tasks.conftest import emulators, provider_env  # noqa: F401 (fixtures)


async def _logs(flow_run_ids: list[UUID]) -> list[str]:
    await APILogHandler.aflush()  # the API log worker sends in the background
    async with get_client() as client:
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids)), limit=200
        )
    return [log.message for log in logs]


async def _events(resource_id: str, wanted: str, seconds: float = 20.0) -> set[str]:
    """Event names on a resource, polled until `wanted` shows (events land asynchronously)."""
    names: set[str] = set()
    async with get_client() as client:
        for _ in range(int(seconds / 0.5)):
            page = await client.read_events(
                filter=EventFilter(resource=EventResourceFilter(id=[resource_id])), limit=50
            )
            names = {event.event for event in page.events}
            if wanted in names:
                break
            await asyncio.sleep(0.5)
    return names


async def test_refused_request_ends_refused_with_one_line_and_no_traceback(
    studio_env, demo_avatar
) -> None:
    state = await content_batch(
        avatar_id="demo",
        num_pieces=3,
        tier_distribution={"capa1": 0.6, "capa2": 0.6, "capa3": 0.1},
        return_state=True,
    )
    assert state.is_failed() and state.name == "Refused"
    assert state.message == (
        "tier_distribution: ratios sum to 1.3; they must sum to 1 (e.g. 0.6,0.3,0.1)"
    )
    with pytest.raises(BatchRequestError):
        await state.result()
    run_id = state.state_details.flow_run_id
    messages = await _logs([run_id])
    assert sum("Batch refused" in m for m in messages) == 1, messages
    assert not any("Traceback" in m for m in messages), messages
    # Prefect names the state event after the state: the failed-batch automation
    # (expects prefect.flow-run.Failed) does not fire for a refusal
    names = await _events(f"prefect.flow-run.{run_id}", "prefect.flow-run.Refused")
    assert "prefect.flow-run.Refused" in names and "prefect.flow-run.Failed" not in names
    with session_scope() as session:
        assert session.scalar(select(Batch)) is None


async def test_all_failing_batch_shows_failed_chunks_and_batch_failed(
    studio_env, provider_env, emulators  # noqa: F811
) -> None:
    from studio.bootstrap import ensure_demo_avatar

    for emulator in emulators:
        emulator.behaviour.failure_rate = 1.0
    ensure_demo_avatar()
    state = await content_batch(avatar_id="demo", num_pieces=12, return_state=True)
    assert state.is_failed() and state.name == "Failed"
    assert state.message.startswith("0/12 pieces made, below min_success_ratio 0.8: ")
    assert "12 failed at image generation (" in state.message
    with pytest.raises(BatchBelowMinimum):
        await state.result()

    run_id = state.state_details.flow_run_id
    async with get_client() as client:
        chunks = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])
            )
        )
    chunk_states = {c.name: (c.state.type.value, c.state.message) for c in chunks}
    assert set(chunk_states) == {"image-chunk-0", "image-chunk-1"}
    assert chunk_states["image-chunk-0"][0] == "FAILED"
    assert chunk_states["image-chunk-0"][1].startswith("chunk 0: 10/10 images failed: piece ")
    assert chunk_states["image-chunk-1"][1].startswith("chunk 1: 2/2 images failed: piece ")

    text = Path(studio_env.log_file).read_text()
    assert "[BATCH COMPLETE]" not in text
    line = next(line for line in text.splitlines() if "[BATCH FAILED]" in line)
    assert re.search(
        r"\[BATCH FAILED\] Avatar: \S+ \| Total Duration: [0-9.]+s \| Pieces: 0 \| "
        r"Cost: \$[0-9.]+ \| Reason: 0/12 pieces made, below min_success_ratio 0.8: "
        r"12 failed at image generation \(\d+x all image providers failed",
        line,
    ), line
    with session_scope() as session:
        rows = list(session.scalars(select(ContentPiece)))
        batch = session.scalar(select(Batch))
    assert len(rows) == 12 and all(r.status == "failed" for r in rows)  # all saved
    assert batch is not None and batch.status == "failed"
    assert batch.error == state.message  # the row and the run say the same
    names = await _events(f"studio.batch.{batch.id}", "studio.batch.failed")
    assert names >= {"studio.batch.failed"} and "studio.batch.completed" not in names


def _spec(i: int) -> PieceSpec:
    return PieceSpec(piece_id=f"piece-{i:04d}", batch_id="b", index=i, prompt="p", tier="capa1")


def test_a_chunk_with_a_failed_piece_is_failed_and_keeps_its_images() -> None:
    made = GeneratedImage(piece_id="piece-0000", provider="comfyui", path="/tmp/x.png")
    lost = ImageFailure(piece_id="piece-0001", reason="comfyui: HTTP 500\n  upstream")
    state = chunk_state(3, [made, lost])
    assert state.is_failed()
    assert state.message == "chunk 3: 1/2 images failed: piece piece-00: comfyui: HTTP 500 upstream"
    assert chunk_state(0, [made]).is_completed()


async def test_the_batch_reads_a_failed_chunks_items_and_a_crashed_chunk_as_failures() -> None:
    made = GeneratedImage(piece_id="piece-0000", provider="comfyui", path="/tmp/x.png")
    lost = ImageFailure(piece_id="piece-0001", reason="timeout")
    items = await _chunk_items([_spec(0), _spec(1)], Failed(message="m", data=[made, lost]))
    assert items == [made, lost]
    crashed = Crashed(message="process killed", data=RuntimeError("killed"))
    items = await _chunk_items([_spec(0), _spec(1)], crashed)
    assert [(i.piece_id, i.reason) for i in items] == [
        ("piece-0000", "process killed"),
        ("piece-0001", "process killed"),
    ]
    assert await _chunk_items([_spec(0)], Completed(data=[made])) == [made]


def test_threshold_in_exact_fractions() -> None:
    assert not 4 / 20 <= 1 - 0.8  # the old float rule read 16/20 at 0.8 as a failure
    assert meets_minimum(16, 20, 0.8)
    assert not meets_minimum(15, 20, 0.8)
    assert meets_minimum(7, 10, 0.7) and not meets_minimum(69, 100, 0.7)
    assert meets_minimum(0, 0, 0.8)
    # the row and Prefect read the same rule (MIN_SUCCESS_RATIO default 0.8)
    assert batch_status(requested=20, failed=4) == "completed"
    assert batch_status(requested=20, failed=5) == "failed"


def test_failure_summary_names_steps_and_main_reasons() -> None:
    def failed(i: int, reason: str, provider: str | None = None) -> PieceOutcome:
        return PieceOutcome(
            piece_id=f"p{i}", index=i, template_id=None, tier="capa1",
            status=PieceStatus.FAILED, provider=provider, reason=reason,
        )

    pieces = [failed(i, "comfyui timed out") for i in range(3)]
    pieces += [failed(3, "replicate 402"), failed(4, "not stored", provider="comfyui")]
    assert failure_summary(pieces) == (
        "4 failed at image generation (3x comfyui timed out; 1x replicate 402), "
        "1 failed at storage upload (1x not stored)"
    )
    assert failure_summary([]) == ""
