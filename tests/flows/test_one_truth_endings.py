"""One truth: a batch's row says what its Prefect run says, in the endings a run does not
reach by itself (timed out), and when it is resumed (by whom, when, of which run).

Real Prefect API (the session's test server), real providers' emulators, SQLite rows.
"""

from __future__ import annotations

import pytest
from prefect import tags
from sqlalchemy import select

from studio.db.engine import session_scope
from studio.db.models import Batch, ContentPiece
from tests.tasks.conftest import emulators, provider_env  # noqa: F401 - fixtures


@pytest.fixture(autouse=True)
def _prefect(prefect_api) -> None:
    return None


def _row(batch_id: str) -> Batch:
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        return batch


def _set_status(batch_id: str, status: str) -> None:
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        batch.status = status


async def test_one_truth_a_timed_out_batch_row_says_timed_out(
    studio_env, provider_env, emulators  # noqa: F811
) -> None:
    from flows.content_batch import content_batch
    from studio.bootstrap import ensure_demo_avatar

    for emulator in emulators:
        emulator.behaviour.hang = True  # no image ever finishes: the batch times out
    ensure_demo_avatar()
    state = await content_batch.with_options(timeout_seconds=4)(
        avatar_id="demo", num_pieces=3, return_state=True
    )
    for emulator in emulators:
        emulator.behaviour.hang = False
    assert state.name == "TimedOut"
    batch_id = str(state.state_details.flow_run_id)
    row = _row(batch_id)
    assert row.status == "timed_out"
    assert f"run {batch_id} ended TimedOut" in (row.error or "")
    assert row.finished_at is not None


async def test_one_truth_resumes_are_recorded_by_whom_and_when(studio_env) -> None:
    from flows.content_batch import content_batch
    from studio.bootstrap import ensure_demo_avatar

    ensure_demo_avatar()
    first = await content_batch(avatar_id="demo", num_pieces=3, seed=4)
    _set_status(first.batch_id, "crashed")  # as crash-recovery writes it after a kill -9
    await content_batch(avatar_id="demo", resume_batch_id=first.batch_id)
    row = _row(first.batch_id)
    assert row.status == "completed"
    assert [e["by"] for e in row.resumes or []] == ["operator"]
    assert row.resumes[0]["at"] and row.resumes[0]["run_id"] != first.batch_id

    _set_status(first.batch_id, "crashed")
    with tags("auto-resume", f"auto-resume:{first.batch_id}", "resumes:run-before"):
        await content_batch(avatar_id="demo", resume_batch_id=first.batch_id)
    row = _row(first.batch_id)
    assert row.status == "completed"
    assert [(e["by"], e["resumes"]) for e in row.resumes or []] == [
        ("operator", None),
        ("crash-recovery", "run-before"),
    ]


async def test_one_truth_resume_of_another_avatars_batch_is_refused_and_changes_nothing(
    studio_env,
) -> None:
    from flows.content_batch import content_batch
    from studio.avatars import add_avatar
    from studio.bootstrap import ensure_demo_avatar
    from studio.providers.build import PREVIEW

    ensure_demo_avatar()
    with session_scope() as session:
        add_avatar(session, "other", "travel", "https://w/loras/other.safetensors", "daily")
    first = await content_batch(avatar_id="demo", num_pieces=3, seed=5)
    _set_status(first.batch_id, "crashed")
    with session_scope() as session:
        before = [
            (r.id, r.status, r.url)
            for r in session.scalars(
                select(ContentPiece).where(ContentPiece.batch_id == first.batch_id)
            )
        ]
    rendered = PREVIEW.rendered
    state = await content_batch(
        avatar_id="other", resume_batch_id=first.batch_id, return_state=True
    )
    assert state.is_failed()
    assert f"batch '{first.batch_id}' belongs to another avatar, not 'other'" in (
        state.message or ""
    )
    assert PREVIEW.rendered == rendered  # nothing made, nothing spent
    assert _row(first.batch_id).status == "crashed"  # the refusal rewrote nothing
    with session_scope() as session:
        after = [
            (r.id, r.status, r.url)
            for r in session.scalars(
                select(ContentPiece).where(ContentPiece.batch_id == first.batch_id)
            )
        ]
    assert after == before


async def test_one_truth_resume_of_an_unknown_batch_is_refused_naming_it(studio_env) -> None:
    from flows.content_batch import content_batch
    from studio.bootstrap import ensure_demo_avatar

    ensure_demo_avatar()
    unknown = "0b9e6f1e-5d0c-4c53-9a55-2f1d3c1e7a42"  # a batch id is a UUID (issue 15)
    state = await content_batch(avatar_id="demo", resume_batch_id=unknown, return_state=True)
    assert state.is_failed()
    assert f"no batch with id '{unknown}' to resume" in (state.message or "")
