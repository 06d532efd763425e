"""The image-chunk subflow: up to 10 pieces generated concurrently.

A chunk is its own flow run so the Prefect UI shows which chunk of which batch
failed; a piece whose image task fails after its retries comes back as an
ImageFailure rather than failing the chunk, so the rest of the batch goes on.
"""

from __future__ import annotations

import asyncio

from prefect import flow

from studio import progress
from studio.types import AvatarRef, GeneratedImage, ImageFailure, PieceSpec
from tasks.generate_images import generate_image, release_idle_slots


@flow(name="image-chunk", flow_run_name="image-chunk-{chunk_index}", log_prints=False)
async def image_chunk(
    chunk_index: int,
    specs: list[PieceSpec],
    avatar: AvatarRef,
    staging_root: str,
) -> list[GeneratedImage | ImageFailure]:
    async def one(spec: PieceSpec) -> GeneratedImage | ImageFailure:
        state = await generate_image(spec, avatar, staging_root, return_state=True)
        if state.is_completed():
            result: GeneratedImage = await state.result()
        else:
            message = state.message or "image generation failed"
            try:
                await state.result()
            except Exception as exc:
                message = str(exc)
            return ImageFailure(piece_id=spec.piece_id, reason=message)
        progress.advance("images")
        return result

    try:
        return list(await asyncio.gather(*(one(spec) for spec in specs)))
    finally:
        # a worker process may exit right after: leave no provider slot held behind
        await release_idle_slots()
