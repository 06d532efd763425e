"""Step 4: moderate every piece's text and image, then apply the safety policy."""

from __future__ import annotations

from prefect import task

from studio.moderation.base import ModerationItem
from studio.moderation.policy import verdict_for
from studio.moderation.registry import build_moderator
from studio.types import SafetyReport


@task(
    name="check-safety",
    retries=2,
    retry_delay_seconds=[2, 8],
    timeout_seconds=60,
    tags=["safety-check"],
)
async def check_safety(items: list[ModerationItem]) -> SafetyReport:
    moderator = build_moderator()
    scores = await moderator.score(items)
    verdicts = {
        item.piece_id: verdict_for(item, scores[item.piece_id], checked_by=moderator.name)
        for item in items
    }
    return SafetyReport(verdicts=verdicts, cost_usd=0.0, calls=0)
