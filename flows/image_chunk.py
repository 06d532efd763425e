"""The image-chunk subflow: up to 10 pieces generated concurrently, in one task run.

A chunk is its own flow run so the Prefect UI shows which chunk of which batch
failed; a piece whose image fails comes back as an ImageFailure rather than failing
the others, so the rest of the batch goes on. A chunk with failed pieces ends Failed,
its message naming them and why, and its state still carries every item (images and
failures): the batch reads it with `return_state=True` and keeps what was made.
The chunks of a batch register one after the other (`staggered_starts`, from
engine/early_start.py), each marking itself registered as its body begins.
"""

from __future__ import annotations

from prefect import flow
from prefect.states import Completed, Failed, State

from engine.early_start import mark_registered
from flows.progress_artifact import image_progress
from studio import progress_events
from studio.types import AvatarRef, GeneratedImage, ImageFailure, PieceSpec
from tasks.generate_images import generate_images, release_idle_slots

#: failed pieces a chunk's state message names one by one
NAMED_FAILURES = 3


def chunk_state(chunk_index: int, items: list[GeneratedImage | ImageFailure]) -> State:
    """Completed when every piece has its image, else Failed naming the failed pieces."""
    failures = [item for item in items if isinstance(item, ImageFailure)]
    made = len(items) - len(failures)
    if not failures:
        return Completed(message=f"{made}/{len(items)} images made", data=items)
    named = "; ".join(
        f"piece {f.piece_id[:8]}: {' '.join(f.reason.split())[:160]}"
        for f in failures[:NAMED_FAILURES]
    )
    if len(failures) > NAMED_FAILURES:
        named += f"; and {len(failures) - NAMED_FAILURES} more"
    return Failed(
        message=f"chunk {chunk_index}: {len(failures)}/{len(items)} images failed: {named}",
        data=items,
    )


@flow(name="image-chunk", flow_run_name="image-chunk-{chunk_index}", log_prints=False)
async def image_chunk(
    chunk_index: int,
    specs: list[PieceSpec],
    avatar: AvatarRef,
    staging_root: str,
) -> list[GeneratedImage | ImageFailure]:
    tracker = image_progress(specs[0].batch_id) if specs else None
    if specs:
        mark_registered(specs[0].batch_id, chunk_index)  # the next chunk may register

    def piece_done(item: GeneratedImage | ImageFailure) -> None:
        if isinstance(item, GeneratedImage):
            progress_events.advance("images")
        if tracker is not None:
            tracker.advance(failed=isinstance(item, ImageFailure))

    try:
        items = await generate_images(chunk_index, specs, avatar, staging_root, piece_done)
    finally:
        # a worker process may exit right after: leave no provider slot held behind
        await release_idle_slots()
    return chunk_state(chunk_index, items)  # type: ignore[return-value]
