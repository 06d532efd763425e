"""Statistics by SQL aggregation only: the database counts, Python never loops rows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from studio.db.models import Avatar, Batch, ContentPiece
from studio.db.queries import avatar_summary
from studio.ledger.totals import avatar_cost


def avatar_stats(session: Session, avatar_id: str) -> dict[str, Any]:
    # the pieces' counts and cost in one grouped pass (studio.db.queries), not three
    pieces = avatar_summary(session, avatar_id)
    batches, batch_cost = session.execute(
        select(func.count(), func.coalesce(func.sum(Batch.cost_usd), 0.0)).where(
            Batch.avatar_id == avatar_id
        )
    ).one()
    return {
        **pieces,
        "batches": int(batches),
        "batches_cost_usd": round(float(batch_cost), 4),
        # what providers billed, from the cost ledger (every billed call, by provider/day)
        "billed": avatar_cost(session, avatar_id),
    }


def database_counts(session: Session) -> dict[str, int]:
    return {
        "avatars": int(session.scalar(select(func.count()).select_from(Avatar)) or 0),
        "batches": int(session.scalar(select(func.count()).select_from(Batch)) or 0),
        "content_pieces": int(session.scalar(select(func.count()).select_from(ContentPiece)) or 0),
    }
