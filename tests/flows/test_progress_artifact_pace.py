"""The batch's progress artifact moves at most once per MIN_UPDATE_SECONDS, and always
reaches 100 %: each update is an API call and a server event (issue 20)."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import pytest

from flows import progress_artifact
from flows.progress_artifact import ImageProgress


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The progress of each update the tracker sends (Prefect's call recorded, not made)."""
    calls: list[float] = []

    async def record(*, artifact_id, progress, description) -> None:
        calls.append(progress)

    monkeypatch.setattr(progress_artifact, "aupdate_progress_artifact", record)
    return calls


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(progress_artifact, "_clock", lambda: now[0])
    return now


def test_images_faster_than_the_pace_send_only_the_end(sent, clock) -> None:
    async def run() -> None:
        tracker = ImageProgress(uuid4(), 10)
        for _ in range(10):  # ten images within 0.9 s of the artifact's creation
            clock[0] += 0.09
            tracker.advance()
        await tracker.finish()

    asyncio.run(run())
    assert sent == [100.0]


def test_updates_step_at_most_once_per_interval_and_end_at_100(sent, clock) -> None:
    async def run() -> None:
        tracker = ImageProgress(uuid4(), 10)
        for _ in range(10):  # one image every 0.5 s
            clock[0] += 0.5
            tracker.advance()
        await tracker.finish()

    asyncio.run(run())
    assert sent == [20.0, 40.0, 60.0, 80.0, 100.0]


def test_a_slow_batch_still_moves_in_steps(sent, clock) -> None:
    async def run() -> None:
        tracker = ImageProgress(uuid4(), 50)
        for n in range(50):  # one image every 2 s: the step, not the clock, paces it
            clock[0] += 2.0
            tracker.advance(failed=n == 0)
        await tracker.finish()

    asyncio.run(run())
    assert sent == [float(p) for p in range(10, 101, 10)]
