"""Step 2: one image per piece through the provider chain, staged so it is paid once."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from studio.providers.registry import build_image_chain
from studio.staging import ImageStaging
from studio.types import AvatarRef, GeneratedImage, PieceSpec

_chain = None


def image_chain():  # type: ignore[no-untyped-def]
    global _chain
    if _chain is None:
        _chain = build_image_chain()
    return _chain


class ImageGenerationFailed(Exception):
    """Every provider failed for a piece; the message carries each provider's reason."""


@task(
    name="generate-image",
    retries=1,
    retry_delay_seconds=2,
    timeout_seconds=600,
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
    except Exception as exc:
        raise ImageGenerationFailed(f"piece {spec.index}: {exc}") from exc
    image = GeneratedImage(
        piece_id=spec.piece_id,
        provider=result.provider,
        path="",
        content_type=result.image.content_type,
        seconds=result.seconds,
        cost_usd=result.image.cost_usd,
        stand_in=result.stand_in,
        attempts=result.attempts,
    )
    return staging.save(image, result.image.data)
