"""How a batch's row ends when its run does not finish it, and who resumed it.

Why: the row and the Prefect state must tell the same story in every ending. A run
that finishes writes its row itself (tasks/save.py finish_batch: completed or failed);
a run that times out, crashes or is cancelled does not reach that line, so its state
hook (flows/batch_state_hooks.py) or the crash-recovery flow writes the ending here.
Resumes are appended to `batch.resumes` (run id, by whom, when, which run it resumed).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from studio.db.models import Avatar, Batch
from studio.request import BatchRequestError

#: statuses a run wrote when it got to the end; nothing overwrites them
FINISHED = ("completed", "failed", "refused")
#: statuses of a batch whose run ended before finishing it; it can be resumed
INTERRUPTED = ("crashed", "timed_out", "cancelled")


def resumable_config(session: Session, batch_id: str, avatar_id: str | None) -> dict[str, Any]:
    """The stored request of a batch that may be resumed by a run for `avatar_id`.

    Refused (before anything is spent, naming the id): an unknown batch, a batch that
    is already complete (resuming it would change nothing), and another avatar's batch.
    """
    batch = session.get(Batch, batch_id)
    if batch is None:
        raise BatchRequestError("resume_batch_id", f"no batch with id {batch_id!r} to resume")
    if batch.status == "completed":
        raise BatchRequestError(
            "resume_batch_id", f"batch {batch_id!r} is already complete; nothing to resume"
        )
    if batch.status == "refused":
        raise BatchRequestError(
            "resume_batch_id", f"batch {batch_id!r} was refused; there is nothing to resume"
        )
    config = dict(batch.config)
    if avatar_id is not None:
        avatar = session.get(Avatar, batch.avatar_id)
        owners = {batch.avatar_id, config.get("avatar_id"), avatar.name if avatar else None}
        if avatar_id not in owners:
            raise BatchRequestError(
                "resume_batch_id",
                f"batch {batch_id!r} belongs to another avatar, not {avatar_id!r}",
            )
    return config


def note_resume(session: Session, batch_id: str, run_id: str, by: str, resumes: str | None) -> None:
    """Record that run `run_id` resumed the batch (`by`: crash-recovery or operator)."""
    batch = session.get(Batch, batch_id)
    if batch is None:
        return
    entry = {"run_id": run_id, "by": by, "at": datetime.now(UTC).isoformat(), "resumes": resumes}
    history = [e for e in (batch.resumes or []) if e.get("run_id") != run_id]
    batch.resumes = [*history, entry]


def end_batch(
    session: Session,
    batch_id: str,
    status: str,
    reason: str,
    run_id: str | None = None,
    resuming: bool = False,
    avatar: str | None = None,
) -> bool:
    """Write an interrupted ending (crashed, timed_out, failed, cancelled) onto a running batch.

    `avatar` (the run's avatar_id parameter, an id or a name): a run of another avatar
    that names this batch, crashed or cancelled before its validation refused it, must
    not end (and so hand to crash recovery) a batch that is not its own.

    Only a row still `running` changes, and, when `run_id` is given, only if that run
    is the batch's latest (a resuming run: the latest one it recorded): a refused or
    stale run never rewrites another run's story. Without `run_id` (crash-recovery,
    which reads every run of the batch) the ending is written as said.
    """
    batch = session.get(Batch, batch_id)
    if batch is None or batch.status != "running":
        return False
    if avatar is not None and not _owned_by(session, batch, avatar):
        return False
    latest = [e.get("run_id") for e in (batch.resumes or [])[-1:]]
    if run_id is not None and (latest or resuming) and latest != [run_id]:
        return False
    batch.status = status
    batch.error = reason[:2000]
    batch.finished_at = datetime.now(UTC)
    return True


def _owned_by(session: Session, batch: Batch, avatar: str) -> bool:
    """Whether `avatar` (an id or a name) is the batch's avatar."""
    if batch.avatar_id == avatar:
        return True
    owner = session.get(Avatar, batch.avatar_id)
    return owner is not None and owner.name == avatar


def give_up(session: Session, batch_id: str, reason: str) -> bool:
    """An automatic resume that kept failing: the batch ends `failed` with the reason."""
    batch = session.get(Batch, batch_id)
    if batch is None or batch.status in FINISHED:
        return False
    batch.status = "failed"
    batch.error = reason[:2000]
    batch.finished_at = datetime.now(UTC)
    return True


def batch_status(session: Session, batch_id: str) -> tuple[str, dict[str, Any]] | None:
    """(status, stored request) of a batch, or None when there is no such batch."""
    batch = session.get(Batch, batch_id)
    return None if batch is None else (batch.status, dict(batch.config))
