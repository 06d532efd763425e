"""What was spent, summed by the database over billed ledger rows.

A batch's cost is every billed call recorded for it (images whose output was lost,
pieces that failed later, hooks, moderation), not the price of the images that reached
a piece; a resumed batch adds only the calls it made itself. `studio stats` reads the
same rows by provider and by day.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import String, cast, func, select
from sqlalchemy.orm import Session

from studio.db.models import CostLedgerEntry as Row
from studio.types import BatchResult

#: ledger kind -> the batch's cost_breakdown key (the spec's names)
BREAKDOWN_KEYS = {"image": "images", "hook": "hooks", "moderation": "safety"}


@dataclass(frozen=True)
class BatchCost:
    total_usd: float
    breakdown: dict[str, float]
    billed_calls: int
    #: calls a budget refused (rows with outcome `budget`)
    refused_calls: int = 0
    by_provider: dict[str, float] = field(default_factory=dict)


def batch_cost(session: Session, batch_id: str) -> BatchCost:
    billed = session.execute(
        select(Row.kind, Row.provider, func.count(), func.coalesce(func.sum(Row.price_usd), 0.0))
        .where(Row.batch_id == batch_id, Row.status == "billed")
        .group_by(Row.kind, Row.provider)
    ).all()
    breakdown = {"images": 0.0, "hooks": 0.0, "safety": 0.0, "storage": 0.0}
    by_provider: dict[str, float] = {}
    calls = 0
    for kind, provider, count, usd in billed:
        key = BREAKDOWN_KEYS.get(kind, kind)
        breakdown[key] = breakdown.get(key, 0.0) + float(usd)
        by_provider[provider] = by_provider.get(provider, 0.0) + float(usd)
        calls += int(count)
    refused = session.scalar(
        select(func.count()).where(Row.batch_id == batch_id, Row.outcome == "budget")
    )
    breakdown = {k: round(v, 6) for k, v in breakdown.items()}
    return BatchCost(
        total_usd=round(sum(breakdown.values()), 6),
        breakdown=breakdown,
        billed_calls=calls,
        refused_calls=int(refused or 0),
        by_provider={k: round(v, 6) for k, v in by_provider.items()},
    )


def _day(session: Session):  # type: ignore[no-untyped-def]
    """The UTC calendar day of a row, as 'YYYY-MM-DD', in the session's dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", Row.created_at), "YYYY-MM-DD")
    return cast(func.date(Row.created_at), String)


def avatar_cost(session: Session, avatar_id: str, days: int = 30) -> dict[str, object]:
    """Billed cost of one avatar: total, by provider, by kind and by UTC day (newest
    `days` days), each one grouped query."""
    mine = (Row.avatar_id == avatar_id, Row.status == "billed")
    total = session.scalar(select(func.coalesce(func.sum(Row.price_usd), 0.0)).where(*mine))
    by_provider = session.execute(
        select(Row.provider, func.count(), func.sum(Row.price_usd))
        .where(*mine)
        .group_by(Row.provider)
        .order_by(Row.provider)
    ).all()
    day = _day(session).label("day")
    by_day = session.execute(
        select(day, func.sum(Row.price_usd)).where(*mine).group_by(day).order_by(day.desc())
        .limit(days)
    ).all()
    return {
        "cost_usd": round(float(total or 0.0), 6),
        "cost_by_provider": {
            p: {"calls": int(n), "cost_usd": round(float(usd or 0.0), 6)}
            for p, n, usd in by_provider
        },
        "cost_by_day": {str(d): round(float(usd or 0.0), 6) for d, usd in reversed(by_day)},
    }


def piece_image_cost(session: Session, batch_id: str) -> dict[str, float]:
    """Billed image cost per piece of a batch, failed and lost attempts included."""
    rows = session.execute(
        select(Row.piece_id, func.sum(Row.price_usd))
        .where(Row.batch_id == batch_id, Row.kind == "image", Row.status == "billed")
        .group_by(Row.piece_id)
    ).all()
    return {piece: round(float(usd or 0.0), 6) for piece, usd in rows if piece}


def with_ledger_cost(
    result: BatchResult, cost: BatchCost, pieces: dict[str, float]
) -> BatchResult:
    """The result with its cost, breakdown and per-piece image cost from the ledger."""
    outcomes = [
        o.model_copy(update={"cost_usd": pieces.get(o.piece_id, 0.0)}) for o in result.pieces
    ]
    return result.model_copy(
        update={"cost_usd": cost.total_usd, "cost_breakdown": cost.breakdown, "pieces": outcomes}
    )
