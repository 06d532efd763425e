"""Step 1: plan the batch's pieces from the cached template library."""

from __future__ import annotations

from prefect import task

from studio.catalog import template_library
from studio.request import BatchRequest
from studio.templates import select_templates as plan
from studio.types import AvatarRef, PieceSpec


@task(name="select-templates", retries=2, retry_delay_seconds=1, timeout_seconds=30)
def select_templates(request: BatchRequest, avatar: AvatarRef, batch_id: str) -> list[PieceSpec]:
    return plan(
        template_library(),
        batch_id=batch_id,
        avatar_niche=avatar.niche,
        num_pieces=request.num_pieces,
        tier_distribution=request.tier_distribution.as_dict(),
        platform=request.platform,
        seed=request.seed if request.seed is not None else batch_id,
        custom_prompts=request.custom_prompts,
        custom_tiers=request.custom_tiers,
    )
