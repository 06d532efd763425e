"""Step 3: captions, one writer call per group of at most 10 pieces."""

from __future__ import annotations

from prefect import task

from studio.hooks.registry import build_hook_writer
from studio.types import AvatarRef, HookBatch, PieceSpec, Platform


@task(
    name="write-hooks",
    retries=2,
    retry_delay_seconds=[2, 8],
    timeout_seconds=120,
    tags=["hook-generation"],
)
async def write_hooks(specs: list[PieceSpec], avatar: AvatarRef, platform: str) -> HookBatch:
    writer = build_hook_writer()
    return await writer.write(specs, avatar, Platform(platform))
