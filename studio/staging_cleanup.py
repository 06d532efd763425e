"""Staged images are removed once nothing needs them (issue 15: they were never removed).

Staging (studio/staging.py) holds every image a batch made, rejected ones included, so
a retry or a resume pays for nothing twice. Once the batch is completed, nothing can
resume it (a completed batch is refused by name), the pieces that passed are in the
content store, and what was rejected must not linger: `clean_batch_staging` deletes its
staged objects from the private bucket and its local staged files.

Pieces held for review (`pending_review`: a moderation outage, a degraded image) have
no other copy of their image, so theirs stays, privately, until the retention below.
A batch that failed, crashed, timed out or was cancelled keeps its staging, since a
resume needs it. `sweep_staging` (run by the storage-sync flow, every 15 minutes)
removes what is left: staging of completed batches whose cleanup did not run (a crash
between the end and the cleanup, the store down), and staging nothing has touched for
STAGING_RETENTION_DAYS (7 by default), whatever the batch's state. A sweep rather than
an S3 lifecycle rule: it sees the batch's state and works the same on every
S3-compatible store and on local disk; a lifecycle rule on the `staging/` prefix of the
private bucket can be added on top as a backstop.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from studio.settings import Settings, get_settings
from studio.staging import STAGING_PREFIX, RemoteStaging, remote_staging
from studio.storage.settings import StorageSettings

log = logging.getLogger("studio.staging")

#: S3 DeleteObjects takes at most this many keys per call
_DELETE_PAGE = 1000


@dataclass
class CleanupReport:
    """What a cleanup or a sweep removed, and what it could not (safe words only)."""

    batches: list[str] = field(default_factory=list)
    objects_deleted: int = 0
    local_dirs_deleted: int = 0
    errors: list[str] = field(default_factory=list)


def _local_dir(settings: Settings, batch_id: str) -> Path | None:
    """The batch's local staging folder, only if it is a folder inside the staging root."""
    root = settings.work_dir.resolve()
    path = (root / batch_id).resolve()
    return path if path.parent == root else None


def _remote_keys(remote: RemoteStaging, prefix: str) -> Iterator[dict[str, Any]]:
    paginator = remote.client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=remote.bucket, Prefix=prefix):
        yield from page.get("Contents", []) or []


def _delete_keys(remote: RemoteStaging, keys: Iterable[str]) -> int:
    pending = list(keys)
    deleted = 0
    for start in range(0, len(pending), _DELETE_PAGE):
        chunk = pending[start : start + _DELETE_PAGE]
        answer = remote.client.delete_objects(
            Bucket=remote.bucket,
            Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True},
        )
        failed = answer.get("Errors") or []
        if failed:
            codes = sorted({str(error.get("Code", "unknown")) for error in failed})
            raise RuntimeError(f"{len(failed)} staged objects not deleted: {', '.join(codes)}")
        deleted += len(chunk)
    return deleted


def _piece_of(name: str) -> str:
    """The piece id a staged file or object is named after (`<piece>.png`, `<piece>.json`)."""
    return name.rsplit("/", 1)[-1].split(".", 1)[0]


def _remove(
    settings: Settings,
    remote: RemoteStaging | None,
    batch_id: str,
    report: CleanupReport,
    keep: frozenset[str] = frozenset(),
) -> None:
    """Delete one batch's staging but the pieces in `keep`, remote first (the copy
    another host would resume from), then this host's folder."""
    deleted = report.objects_deleted
    if remote is not None:
        try:
            keys = [
                str(obj["Key"])
                for obj in _remote_keys(remote, remote.key(batch_id, ""))
                if _piece_of(str(obj["Key"])) not in keep
            ]
            report.objects_deleted += _delete_keys(remote, keys)
        except Exception as exc:  # an outage: the next sweep removes it
            report.errors.append(f"batch {batch_id}: remote staging kept ({type(exc).__name__})")
    folder = _local_dir(settings, batch_id)
    local = False
    if folder is not None and folder.is_dir():
        if keep:
            for path in folder.iterdir():
                if _piece_of(path.name) not in keep:
                    path.unlink(missing_ok=True)
                    local = True
        if not keep or not any(folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
            report.local_dirs_deleted += 1
            local = True
    if local or report.objects_deleted > deleted:
        report.batches.append(batch_id)


def _held_for_review(batch_id: str) -> frozenset[str]:
    """The batch's pieces held for review: their staged image is their only copy."""
    from sqlalchemy import select

    from studio.db.engine import session_scope
    from studio.db.models import ContentPiece

    with session_scope() as session:
        return frozenset(
            session.scalars(
                select(ContentPiece.id).where(
                    ContentPiece.batch_id == batch_id, ContentPiece.status == "pending_review"
                )
            )
        )


def clean_batch_staging(batch_id: str, settings: Settings | None = None) -> CleanupReport:
    """Remove a completed batch's staged images, remote and local, but those of the
    pieces held for review (kept until STAGING_RETENTION_DAYS)."""
    report = CleanupReport()
    keep = _held_for_review(batch_id)
    _remove(settings or get_settings(), remote_staging(), batch_id, report, keep)
    log.info(
        "Staging cleaned | Batch: %s | Objects: %d | Local: %d%s",
        batch_id,
        report.objects_deleted,
        report.local_dirs_deleted,
        f" | {report.errors[0]}" if report.errors else "",
    )
    return report


def _staged_ages(settings: Settings, remote: RemoteStaging | None) -> dict[str, datetime]:
    """Per staged batch id, when its newest staged file or object was written."""
    newest: dict[str, datetime] = {}

    def seen(batch_id: str, when: datetime) -> None:
        if batch_id and (batch_id not in newest or when > newest[batch_id]):
            newest[batch_id] = when

    root = settings.work_dir
    if root.is_dir():
        for folder in root.iterdir():
            if folder.is_dir():
                times = [p.stat().st_mtime for p in folder.iterdir()] or [folder.stat().st_mtime]
                seen(folder.name, datetime.fromtimestamp(max(times), UTC))
    if remote is not None:
        for obj in _remote_keys(remote, f"{STAGING_PREFIX}/"):
            parts = str(obj["Key"]).split("/")
            if len(parts) >= 3:
                seen(parts[1], obj["LastModified"])
    return newest


def _statuses(batch_ids: Iterable[str]) -> dict[str, str]:
    from sqlalchemy import select

    from studio.db.engine import session_scope
    from studio.db.models import Batch

    ids = list(batch_ids)
    found: dict[str, str] = {}
    with session_scope() as session:
        for start in range(0, len(ids), 500):
            rows = session.execute(
                select(Batch.id, Batch.status).where(Batch.id.in_(ids[start : start + 500]))
            )
            found.update({str(row.id): str(row.status) for row in rows})
    return found


def sweep_staging(settings: Settings | None = None, now: datetime | None = None) -> CleanupReport:
    """Remove the staging of completed batches (but pieces held for review), and any
    staging idle past the retention."""
    settings = settings or get_settings()
    retention = timedelta(days=StorageSettings().staging_retention_days)
    now = now or datetime.now(UTC)
    report = CleanupReport()
    remote = remote_staging()
    try:
        ages = _staged_ages(settings, remote)
    except Exception as exc:  # the store is down: sweep the local disk only
        report.errors.append(f"remote staging not listed ({type(exc).__name__})")
        remote = None
        ages = _staged_ages(settings, None)
    statuses = _statuses(ages) if ages else {}
    for batch_id, newest in sorted(ages.items()):
        if now - newest > retention:
            _remove(settings, remote, batch_id, report)
        elif statuses.get(batch_id) == "completed":
            _remove(settings, remote, batch_id, report, _held_for_review(batch_id))
    log.info(
        "Staging swept | Batches: %d | Objects: %d | Local: %d | Errors: %d",
        len(report.batches),
        report.objects_deleted,
        report.local_dirs_deleted,
        len(report.errors),
    )
    return report
