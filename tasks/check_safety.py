"""Step 4: moderate every piece's text and image, then apply the safety policy.

The policy (studio.moderation.policy) decides which pieces are checked (capa1 template
pieces may be skipped or sampled; custom prompts and capa2/capa3 never), turns flags
into verdicts, holds pieces as pending_review on a moderation outage, and logs the
spec's `Content rejected` and `Safety check summary` lines. It never raises for an
outage, so Prefect's retry here only covers unexpected errors.
"""

from __future__ import annotations

from prefect import task

from studio.moderation.base import ModerationItem
from studio.moderation.registry import build_safety_review
from studio.moderation.settings import ModerationSettings
from studio.types import SafetyReport, SafetyVerdict


@task(
    name="check-safety",
    retries=1,
    retry_delay_seconds=[5],
    timeout_seconds=180,
)
async def check_safety(
    items: list[ModerationItem],
    seed: str = "",
    enabled: bool = True,
    screened: dict[str, SafetyVerdict] | None = None,
) -> SafetyReport:
    """`enabled=False` (the request's safety_check flag) acts like SAFETY_CHECK_ENABLED=false;
    `screened`: pieces rejected on their prompt before step 2, counted in the summary."""
    settings = ModerationSettings()
    if not enabled:
        settings = settings.model_copy(update={"enabled": False})
    return await build_safety_review(settings).run(items, seed=seed, rejected_before=screened)
