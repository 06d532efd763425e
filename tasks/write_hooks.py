"""Step 3: captions, one writer call per group of at most 10 pieces.

The writer never raises for API trouble: it retries, opens its breaker and falls back
to template hooks per piece (each marked), so Prefect's retries here only cover
unexpected errors. The timeout leaves room for the Message Batches option's budget.
"""

from __future__ import annotations

from prefect import task

from studio.hooks.registry import build_hook_writer
from studio.hooks.settings import HookSettings
from studio.types import AvatarRef, HookBatch, PieceSpec, Platform

_HOOKS = HookSettings()
TIMEOUT_SECONDS = 120 + (_HOOKS.message_batch_budget_seconds if _HOOKS.use_message_batches else 0)


@task(
    name="write-hooks",
    retries=1,
    retry_delay_seconds=[5],
    timeout_seconds=TIMEOUT_SECONDS,
    tags=["hook-generation"],
)
async def write_hooks(specs: list[PieceSpec], avatar: AvatarRef, platform: str) -> HookBatch:
    writer = build_hook_writer()
    return await writer.write(specs, avatar, Platform(platform))
