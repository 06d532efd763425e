"""Queries that stay fast at millions of pieces: keyset pages, bulk updates, SQL aggregates.

Why keyset rather than OFFSET: OFFSET n makes the database read and throw away n rows,
so page 500 costs 500 pages. A keyset page seeks the (avatar_id, created_at, id) index
to the last row of the previous page and reads 20 rows, whatever the page number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, case, func, literal, select, tuple_, update
from sqlalchemy.orm import Session

from studio.db.models import ContentPiece

DEFAULT_PAGE_SIZE = 20


@dataclass(frozen=True)
class PageCursor:
    """Where the previous page ended: the last row's (created_at, id), newest first."""

    created_at: datetime
    piece_id: str

    def encode(self) -> str:
        return f"{self.created_at.isoformat()}|{self.piece_id}"

    @classmethod
    def decode(cls, token: str) -> PageCursor:
        stamp, _, piece_id = token.partition("|")
        return cls(datetime.fromisoformat(stamp), piece_id)


@dataclass
class Page:
    items: list[ContentPiece]
    next_cursor: PageCursor | None


def listing_statement(
    avatar_id: str, after: PageCursor | None = None, page_size: int = DEFAULT_PAGE_SIZE
) -> Select[tuple[ContentPiece]]:
    """Newest first; `after` continues below the previous page's last row."""
    stmt = select(ContentPiece).where(ContentPiece.avatar_id == avatar_id)
    if after is not None:
        # a row-value comparison, not (a < x OR (a = x AND b < y)): PostgreSQL turns it
        # into one index range on (avatar_id, created_at, id); the OR form scans
        stmt = stmt.where(
            tuple_(ContentPiece.created_at, ContentPiece.id)
            < tuple_(literal(after.created_at, ContentPiece.created_at.type), after.piece_id)
        )
    return stmt.order_by(ContentPiece.created_at.desc(), ContentPiece.id.desc()).limit(page_size)


def list_pieces(
    session: Session,
    avatar_id: str,
    after: PageCursor | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Page:
    """One keyset page of an avatar's pieces plus the cursor for the next one."""
    items = list(session.scalars(listing_statement(avatar_id, after, page_size)))
    cursor = None
    if len(items) == page_size:
        last = items[-1]
        cursor = PageCursor(last.created_at, last.id)
    return Page(items, cursor)


def bulk_set_status(session: Session, piece_ids: Sequence[str], status: str) -> int:
    """One UPDATE for all pieces (the spec's "Batch status updates"); the caller commits once."""
    if not piece_ids:
        return 0
    result = session.execute(
        update(ContentPiece)
        .where(ContentPiece.id.in_(list(piece_ids)))
        .values(status=status)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def avatar_summary(session: Session, avatar_id: str) -> dict[str, Any]:
    """Totals, per-tier and per-status counts and cost in one aggregate query.

    The database does the counting (GROUP BY over the avatar's rows); Python only folds
    the handful of (tier, status) groups that come back.
    """
    rows = session.execute(
        select(
            ContentPiece.access_tier,
            ContentPiece.status,
            func.count(),
            func.coalesce(func.sum(ContentPiece.cost_usd), 0.0),
            func.sum(case((ContentPiece.needs_sync.is_(True), 1), else_=0)),
        )
        .where(ContentPiece.avatar_id == avatar_id)
        .group_by(ContentPiece.access_tier, ContentPiece.status)
    ).all()
    by_tier: dict[str, int] = {}
    by_status: dict[str, int] = {}
    total = 0
    cost = 0.0
    pending_sync = 0
    for tier, status, count, group_cost, unsynced in rows:
        by_tier[tier] = by_tier.get(tier, 0) + int(count)
        by_status[status] = by_status.get(status, 0) + int(count)
        total += int(count)
        cost += float(group_cost)
        pending_sync += int(unsynced or 0)
    return {
        "avatar_id": avatar_id,
        "total_pieces": total,
        "by_tier": by_tier,
        "by_status": by_status,
        "pieces_cost_usd": round(cost, 4),
        "needs_sync": pending_sync,
    }
