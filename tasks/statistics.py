"""Step 7: the avatar's aggregates after the batch, computed by the database."""

from __future__ import annotations

from typing import Any

from prefect import task

from studio.db.engine import session_scope
from studio.stats import avatar_stats


@task(name="statistics", retries=1, retry_delay_seconds=1, timeout_seconds=30)
def calculate_statistics(avatar_id: str) -> dict[str, Any]:
    with session_scope() as session:
        return avatar_stats(session, avatar_id)
