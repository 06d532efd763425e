"""Move pieces kept locally during an R2 outage up to R2, exactly once.

Why this shape: pieces marked ``needs_sync`` are read a page at a time (keyset by id)
and, on PostgreSQL, locked with SKIP LOCKED so two sync runs never take the same piece.
Each upload is a HEAD-then-PUT by checksum, so a sync that died after uploading but
before its commit finds the object already there and does not upload it again. The
rows of a page are then updated in one statement and one commit, and only then are
the local copies removed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, case, select, update
from sqlalchemy.orm import Session

from studio.db.models import ContentPiece
from studio.storage.errors import StorageError, StorageUnavailable
from studio.storage.local import LocalContentStore
from studio.types import StoredObject

if TYPE_CHECKING:  # the sync flow gets a built store; boto3 is imported by whoever built it
    from studio.storage.r2 import R2ContentStore

logger = logging.getLogger(__name__)

SYNC_PAGE_SIZE = 100


@dataclass
class SyncReport:
    """What one sync run did; `remaining` is what is still marked afterwards."""

    synced: int = 0
    failed: int = 0
    missing: int = 0
    remaining: int = 0
    errors: list[str] = field(default_factory=list)


def _pending_page(session: Session, after_id: str | None, limit: int) -> list[ContentPiece]:
    stmt = select(ContentPiece).where(ContentPiece.needs_sync.is_(True))
    if after_id is not None:
        stmt = stmt.where(ContentPiece.id > after_id)
    stmt = stmt.order_by(ContentPiece.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    return list(session.scalars(stmt))


def count_pending(session: Session) -> int:
    from sqlalchemy import func

    return int(
        session.scalar(
            select(func.count()).select_from(ContentPiece).where(ContentPiece.needs_sync.is_(True))
        )
        or 0
    )


def _mark_synced(session: Session, synced: list[tuple[ContentPiece, StoredObject]]) -> None:
    """One executemany UPDATE for the page: remote backend, remote URL, mark cleared."""
    table = ContentPiece.__table__
    stmt = (
        update(table)
        .where(table.c.id == bindparam("b_id"), table.c.needs_sync.is_(True))
        .values(
            needs_sync=False,
            storage_backend=bindparam("b_backend"),
            url=bindparam("b_url"),
            stand_ins=bindparam("b_stand_ins"),
            # a piece kept locally during the outage is published now that it is up
            status=case((table.c.status == "stored_locally", "published"), else_=table.c.status),
        )
    )
    params: list[dict[str, Any]] = [
        {
            "b_id": row.id,
            "b_backend": obj.backend,
            "b_url": obj.url,
            "b_stand_ins": [m for m in (row.stand_ins or []) if m != "storage:local"],
        }
        for row, obj in synced
    ]
    session.connection().execute(stmt, params)


def sync_pending(
    session_factory: Callable[[], contextlib.AbstractContextManager[Session]],
    local: LocalContentStore,
    remote: R2ContentStore,
    page_size: int = SYNC_PAGE_SIZE,
    max_pieces: int | None = None,
) -> SyncReport:
    """Upload every marked piece's local file to `remote` and clear its mark.

    Stops at the first outage (the remote store is down: no point hammering it; the
    next scheduled run continues). A file refused for another reason is counted and
    skipped, and stays marked.
    """
    report = SyncReport()
    after: str | None = None
    outage = False
    while not outage and (max_pieces is None or report.synced < max_pieces):
        synced: list[tuple[ContentPiece, StoredObject]] = []
        with session_factory() as session:
            page = _pending_page(session, after, page_size)
            if not page:
                break
            after = page[-1].id
            for row in page:
                if max_pieces is not None and report.synced + len(synced) >= max_pieces:
                    break
                key = row.storage_key or ""
                if not key or not local.exists(key):
                    report.missing += 1
                    report.errors.append(f"piece {row.id}: local file missing")
                    continue
                try:
                    obj = remote.put(
                        row.id,
                        key,
                        local.read(key),
                        row.content_type or "image/png",
                        row.access_tier,  # type: ignore[arg-type]
                    )
                except StorageUnavailable as error:
                    report.failed += 1
                    report.errors.append(f"piece {row.id}: {error}")
                    outage = True
                    break
                except StorageError as error:
                    report.failed += 1
                    report.errors.append(f"piece {row.id}: {error}")
                    continue
                synced.append((row, obj))
            if synced:
                _mark_synced(session, synced)
        # committed: the local copies are now redundant
        for row, _ in synced:
            with contextlib.suppress(OSError):
                local.path_for(row.storage_key or "").unlink()
        report.synced += len(synced)
    with session_factory() as session:
        report.remaining = count_pending(session)
    logger.info(
        "Storage sync | Synced: %d | Failed: %d | Missing: %d | Remaining: %d",
        report.synced,
        report.failed,
        report.missing,
        report.remaining,
    )
    return report
