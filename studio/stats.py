"""Statistics by SQL aggregation only: the database counts, Python never loops rows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from studio.db.models import Avatar, Batch, ContentPiece


def avatar_stats(session: Session, avatar_id: str) -> dict[str, Any]:
    by_tier = dict(
        session.execute(
            select(ContentPiece.access_tier, func.count())
            .where(ContentPiece.avatar_id == avatar_id)
            .group_by(ContentPiece.access_tier)
        ).all()
    )
    by_status = dict(
        session.execute(
            select(ContentPiece.status, func.count())
            .where(ContentPiece.avatar_id == avatar_id)
            .group_by(ContentPiece.status)
        ).all()
    )
    total, cost = session.execute(
        select(func.count(), func.coalesce(func.sum(ContentPiece.cost_usd), 0.0)).where(
            ContentPiece.avatar_id == avatar_id
        )
    ).one()
    batches, batch_cost = session.execute(
        select(func.count(), func.coalesce(func.sum(Batch.cost_usd), 0.0)).where(
            Batch.avatar_id == avatar_id
        )
    ).one()
    return {
        "avatar_id": avatar_id,
        "total_pieces": int(total),
        "by_tier": {k: int(v) for k, v in by_tier.items()},
        "by_status": {k: int(v) for k, v in by_status.items()},
        "pieces_cost_usd": round(float(cost), 4),
        "batches": int(batches),
        "batches_cost_usd": round(float(batch_cost), 4),
    }


def database_counts(session: Session) -> dict[str, int]:
    return {
        "avatars": int(session.scalar(select(func.count()).select_from(Avatar)) or 0),
        "batches": int(session.scalar(select(func.count()).select_from(Batch)) or 0),
        "content_pieces": int(session.scalar(select(func.count()).select_from(ContentPiece)) or 0),
    }
