"""Step 3: captions, one writer call per group of at most 10 pieces, or (a scheduled
batch's hook_mode "message-batches") one call for the whole batch that sends every
group as one Message Batch.

The writer never raises for API trouble: it retries, opens its breaker and falls back
to template hooks per piece (each marked), so Prefect's retries here only cover
unexpected errors. The flow lengthens the timeout by the Message Batch's time budget.
"""

from __future__ import annotations

from prefect import task

from studio.hooks.registry import build_hook_writer
from studio.types import AvatarRef, HookBatch, PieceSpec, Platform

TIMEOUT_SECONDS = 120


@task(
    name="write-hooks",
    retries=1,
    retry_delay_seconds=[5],
    timeout_seconds=TIMEOUT_SECONDS,
)
async def write_hooks(
    specs: list[PieceSpec],
    avatar: AvatarRef,
    platform: str,
    message_batches: bool = False,
    time_budget_seconds: float | None = None,
) -> HookBatch:
    writer = build_hook_writer(
        use_message_batches=message_batches, time_budget_seconds=time_budget_seconds
    )
    return await writer.write(specs, avatar, Platform(platform))
