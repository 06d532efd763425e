"""Steps 0 and 6: the batch row, and one bulk write of the batch's content pieces.

Rows are keyed by piece id and written with an upsert, so a retried save, a retried
flow run or a resumed batch never creates duplicates.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import task
from sqlalchemy import insert

from studio.db.engine import get_engine, session_scope
from studio.db.models import Batch, ContentPiece
from studio.request import BatchRequestError


def _upsert(table: Any, rows: list[dict[str, Any]], key: str = "id") -> Any:
    """INSERT ... ON CONFLICT (id) DO UPDATE, in the dialect of the configured database."""
    dialect = get_engine().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:  # pragma: no cover - other databases take plain inserts
        return insert(table).values(rows)
    stmt = dialect_insert(table).values(rows)
    updates = {c: stmt.excluded[c] for c in rows[0] if c != key}
    return stmt.on_conflict_do_update(index_elements=[key], set_=updates)


@task(name="register-batch", retries=3, retry_delay_seconds=1, timeout_seconds=30)
def register_batch(batch_id: str, avatar_id: str, config: dict[str, Any], requested: int) -> None:
    with session_scope() as session:
        if session.get(Batch, batch_id) is None:
            session.add(
                Batch(
                    id=batch_id,
                    avatar_id=avatar_id,
                    config=config,
                    status="running",
                    requested=requested,
                    step_seconds={},
                    cost_breakdown={},
                    stand_ins=[],
                )
            )
        else:
            batch = session.get(Batch, batch_id)
            assert batch is not None
            if batch.avatar_id != avatar_id:  # two runs raced past validation with one id
                raise BatchRequestError(
                    "batch_id", f"batch {batch_id!r} belongs to another avatar"
                )
            batch.status = "running"


@task(name="save-pieces", retries=3, retry_delay_seconds=[1, 3, 9], timeout_seconds=30)
def save_pieces(rows: list[dict[str, Any]]) -> int:
    if not rows:
        return 0
    with session_scope() as session:
        session.execute(_upsert(ContentPiece.__table__, rows))
    return len(rows)


@task(name="finish-batch", retries=3, retry_delay_seconds=1, timeout_seconds=30)
def finish_batch(batch_id: str, values: dict[str, Any]) -> None:
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        if batch is None:
            return
        for key, value in values.items():
            setattr(batch, key, value)
        batch.finished_at = datetime.now(UTC)
