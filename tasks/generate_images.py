"""Step 2: one image per piece through the provider chain, staged so it is paid once.

Before any provider is called the task looks in the staging folder keyed by piece id,
so a retried task, a retried flow run or a resumed batch never pays twice. The chain
holds a Prefect global-concurrency lease (`provider:<name>`) around exactly the
provider call. When every provider fails, the avatar's cached asset for the same
template is reused (spec: graceful degradation); without one the piece fails with
every provider's reason, and the task is not retried (the chain already retried).
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import task

from studio.providers.asset_cache import AssetCache
from studio.providers.build import caps
from studio.providers.chain import ChainExhausted, ProviderChain
from studio.providers.registry import build_image_chain
from studio.providers.settings import PROVIDER_NAMES, ProviderSettings
from studio.settings import get_settings
from studio.staging import ImageStaging
from studio.types import AvatarRef, GeneratedImage, PieceSpec
from tasks.provider_slots import PrefectSlots

log = logging.getLogger("studio.providers")

_chain: ProviderChain | None = None
_slots: PrefectSlots | None = None


def image_chain() -> ProviderChain:
    """The process's chain (breakers live as long as the process), on global slots."""
    global _chain, _slots
    if _chain is None:
        settings = ProviderSettings()
        longest_call = max(settings.timeout(name) for name in PROVIDER_NAMES)
        _slots = PrefectSlots(
            caps(settings),
            lease_seconds=settings.slot_lease_seconds,
            max_hold_seconds=max(settings.slot_lease_seconds - longest_call - 60, 0),
            poll_seconds=settings.slot_poll_seconds,
            linger_seconds=settings.slot_linger_seconds,
        )
        _chain = build_image_chain(settings, slot=_slots)
    return _chain


async def release_idle_slots() -> None:
    """Return lingering provider leases to the server (end of a chunk of images)."""
    if _slots is not None:
        await _slots.release_idle()


def asset_cache() -> AssetCache:
    return AssetCache(get_settings().studio_home / "assets")


class ImageGenerationFailed(Exception):
    """Every provider failed for a piece and no cached asset exists; says why, per provider."""


def _retry_unless_exhausted(task, task_run, state) -> bool:  # type: ignore[no-untyped-def]
    """Retry the task only for unexpected errors: an exhausted chain already retried."""
    return not isinstance(state.data, ImageGenerationFailed)


@task(
    name="generate-image",
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=_retry_unless_exhausted,
    timeout_seconds=900,
    tags=["image-generation"],
    task_run_name="generate-image-{spec.index}",
)
async def generate_image(spec: PieceSpec, avatar: AvatarRef, staging_root: str) -> GeneratedImage:
    staging = ImageStaging(Path(staging_root), spec.batch_id)
    already = staging.existing(spec.piece_id)
    if already is not None:
        return already
    try:
        result = await image_chain().generate(spec, avatar)
    except ChainExhausted as exc:
        return _degrade(spec, avatar, staging, exc)
    image = GeneratedImage(
        piece_id=spec.piece_id,
        provider=result.provider,
        path="",
        content_type=result.image.content_type,
        seconds=result.seconds,
        cost_usd=result.cost_usd,
        stand_in=result.stand_in,
        attempts=result.attempts,
    )
    staged = staging.save(image, result.image.data)
    if not result.stand_in:
        asset_cache().remember(avatar.id, spec.template_id, Path(staged.path))
    return staged


def _degrade(
    spec: PieceSpec, avatar: AvatarRef, staging: ImageStaging, exc: ChainExhausted
) -> GeneratedImage:
    cached = asset_cache().lookup(avatar.id, spec.template_id)
    if cached is None:
        raise ImageGenerationFailed(f"piece {spec.index}: {exc}") from None
    log.warning(
        "Graceful degradation | Piece: %s | reused cached asset of template %s | %s",
        spec.piece_id, spec.template_id, exc,
    )
    image = GeneratedImage(
        piece_id=spec.piece_id,
        provider="cache",
        path="",
        content_type="image/png",
        cost_usd=0.0,
        attempts=exc.attempts,
    )
    return staging.save(image, cached)
