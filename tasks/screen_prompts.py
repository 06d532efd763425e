"""Before step 2: screen the prompts, so a rejected one is never sent to an image provider.

The rules are in `studio.moderation.screen`; this module is the Prefect task around
them and the bookkeeping that makes a screened rejection durable: the verdict is
recorded as the piece's `checked` progress, so a resumed batch neither screens it
again nor generates its image.
"""

from __future__ import annotations

from prefect import task

from studio.db.piece_progress import BatchProgress
from studio.moderation.registry import build_prompt_screen
from studio.moderation.screen import prompt_items
from studio.types import PieceSpec, SafetyVerdict
from tasks.piece_progress import record_progress
from tasks.provider_tags import moderation_tags


@task(name="screen-prompts", retries=1, retry_delay_seconds=[5], timeout_seconds=120)
async def screen_prompts(specs: list[PieceSpec]) -> dict[str, SafetyVerdict]:
    """The verdicts of the pieces whose prompt is rejected (the others are not named)."""
    return await build_prompt_screen().run(prompt_items(specs))


def rejected_before_images(done: BatchProgress) -> dict[str, SafetyVerdict]:
    """Pieces an earlier run of this batch rejected at screening (rejected, no image)."""
    return {
        piece_id: verdict
        for piece_id, verdict in done.verdicts.items()
        if verdict.status == "rejected" and piece_id not in done.images
    }


async def screen_before_generation(
    specs: list[PieceSpec], done: BatchProgress
) -> dict[str, SafetyVerdict]:
    """Every piece that must not reach an image provider, with its verdict.

    Only pieces with no image and no verdict yet are screened (a resume repeats
    nothing); new rejections are recorded before step 2 starts.
    """
    earlier = rejected_before_images(done)
    todo = [
        spec for spec in specs
        if spec.piece_id not in done.verdicts and not done.image_done(spec.piece_id)
    ]
    screened: dict[str, SafetyVerdict] = {}
    if todo:
        screen = screen_prompts.with_options(tags=moderation_tags())
        screened = await screen(todo)
        record_progress("checked", list(screened.values()))
    return {**earlier, **screened}
