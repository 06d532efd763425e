"""The image-chunk subflow: up to 10 pieces generated concurrently, in one task run.

A chunk is its own flow run so the Prefect UI shows which chunk of which batch
failed; a piece whose image fails comes back as an ImageFailure rather than failing
the others, so the rest of the batch goes on. A chunk with failed pieces ends Failed,
its message naming them and why, and its state still carries every item (images and
failures): the batch reads it with `return_state=True` and keeps what was made.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from prefect import flow
from prefect.states import Completed, Failed, State

from flows.image_progress import image_progress
from studio import progress
from studio.types import AvatarRef, GeneratedImage, ImageFailure, PieceSpec
from tasks.generate_images import generate_images, release_idle_slots

#: failed pieces a chunk's state message names one by one
NAMED_FAILURES = 3

#: per batch id, one event per chunk, set once the chunk's body runs (it is registered)
_started: dict[str, list[asyncio.Event]] = {}


@contextlib.asynccontextmanager
async def staggered_starts(batch_id: str, chunks: int) -> AsyncIterator[StartGate]:
    """Chunks of a batch register with the Prefect API one after the other.

    Registering a subflow is a handful of writes; several at once on a SQLite server
    collide ("database is locked", answered 503 and retried), so five chunks started
    together each waited seconds before their first image. One after the other, each
    takes a few round trips, while the chunks before it already make images."""
    events = [asyncio.Event() for _ in range(chunks)]
    _started[batch_id] = events

    async def gate(index: int) -> None:
        if index > 0:  # a chunk that never starts must not hold the others back for long
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(events[index - 1].wait(), START_WAIT_SECONDS)

    try:
        yield gate
    finally:
        _started.pop(batch_id, None)


#: the longest a chunk waits for the one before it to be registered
START_WAIT_SECONDS = 5.0

StartGate = Callable[[int], Awaitable[None]]


def _mark_started(batch_id: str, chunk_index: int) -> None:
    events = _started.get(batch_id)
    if events is not None and chunk_index < len(events):
        events[chunk_index].set()


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
        _mark_started(specs[0].batch_id, chunk_index)

    def piece_done(item: GeneratedImage | ImageFailure) -> None:
        if isinstance(item, GeneratedImage):
            progress.advance("images")
        if tracker is not None:
            tracker.advance(failed=isinstance(item, ImageFailure))

    try:
        items = await generate_images(chunk_index, specs, avatar, staging_root, piece_done)
    finally:
        # a worker process may exit right after: leave no provider slot held behind
        await release_idle_slots()
    return chunk_state(chunk_index, items)  # type: ignore[return-value]
