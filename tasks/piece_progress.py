"""Durable per-piece progress as Prefect tasks: read it back, record each finished step.

Each record is one statement and one commit (see studio/db/piece_progress.py), retried like
the save step, so the rows always say how far every piece got.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from studio.db import batch_endings, piece_progress
from studio.db.engine import session_scope
from studio.db.models import Batch
from studio.request import BatchRequestError
from studio.types import GeneratedImage, Hook, PieceSpec, SafetyVerdict, StoredObject

_RECORDERS = {
    "generated": piece_progress.record_images,
    "captioned": piece_progress.record_hooks,
    "checked": piece_progress.record_verdicts,
    "stored": piece_progress.record_stored,
}


@task(name="load-progress", retries=3, retry_delay_seconds=1, timeout_seconds=30)
def load_batch_progress(batch_id: str) -> piece_progress.BatchProgress | None:
    with session_scope() as session:
        return piece_progress.load_progress(session, batch_id)


@task(name="record-plan", retries=3, retry_delay_seconds=[1, 3, 9], timeout_seconds=30)
def record_plan(avatar_id: str, batch_id: str, specs: list[PieceSpec]) -> int:
    with session_scope() as session:
        return piece_progress.record_plan(session, avatar_id, batch_id, specs)


@task(
    name="record-progress",
    retries=3,
    retry_delay_seconds=[1, 3, 9],
    timeout_seconds=30,
    task_run_name="record-{step}",
)
def record_progress(
    step: str, items: list[GeneratedImage] | list[Hook] | list[SafetyVerdict] | list[StoredObject]
) -> int:
    """Mark `items` as having finished `step` (generated, captioned, checked, stored)."""
    if not items:
        return 0
    with session_scope() as session:
        return _RECORDERS[step](session, items)  # type: ignore[operator]


def resumable_batch_request(batch_id: str, avatar_id: str | None) -> dict[str, Any]:
    """The stored request of a batch `avatar_id` may resume; refused (BatchRequestError,
    naming the id) when unknown, already complete or another avatar's; on a database
    without the studio schema, refused naming DATABASE_URL and `studio init`."""
    from studio.db.schema_check import schema_problem

    if problem := schema_problem():  # read before the validate step: checked here too
        raise BatchRequestError("DATABASE_URL", problem)
    with session_scope() as session:
        return batch_endings.resumable_config(session, batch_id, avatar_id)


def finished_batch(batch_id: str) -> str | None:
    """The status of `batch_id` if a run finished it (completed, failed, refused), else None."""
    with session_scope() as session:
        found = batch_endings.batch_status(session, batch_id)
    status = found[0] if found else None
    return status if status in batch_endings.FINISHED else None


def stored_batch_request(batch_id: str) -> dict[str, Any]:
    """The request a batch was started with, to resume it with the same parameters."""
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            raise BatchRequestError("batch_id", f"no batch with id {batch_id!r} to resume")
        return dict(batch.config)
