"""A progress artifact on the batch's run, moved on while its images are made.

The image step is most of a batch's time; the artifact (Prefect's progress artifact,
on the batch run's Artifacts tab) says how far it is without opening the chunks.
Each update is an API call and a server event, so it moves in steps of `STEP_PERCENT`,
at most once per `MIN_UPDATE_SECONDS` (a 10-piece batch would otherwise send one per
image: the Prefect server's CPU is what a busy fleet waits for), and at the end, in the
background: an update that fails is skipped, never a reason to fail a batch.
Chunks run in the batch's process and event loop, so they find the batch's tracker
by batch id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from uuid import UUID

from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact

log = logging.getLogger(__name__)

STEP_PERCENT = 10
MIN_UPDATE_SECONDS = 1.0
_clock = time.monotonic  # tests move it by hand

_trackers: dict[str, ImageProgress] = {}


class ImageProgress:
    def __init__(self, artifact_id: UUID | None, total: int) -> None:
        self.artifact_id = artifact_id
        self.total = total
        self.done = 0
        self.failed = 0
        self._shown = 0.0
        self._shown_at = _clock()  # the artifact was created at 0 %
        self._last: asyncio.Task[None] | None = None

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0

    def description(self) -> str:
        made = self.done - self.failed
        return f"Images: {made}/{self.total} made, {self.failed} failed"

    def advance(self, *, failed: bool = False) -> None:
        self.done += 1
        self.failed += int(failed)
        if self.done == self.total or (
            self.percent - self._shown >= STEP_PERCENT
            and _clock() - self._shown_at >= MIN_UPDATE_SECONDS
        ):
            self._update()

    def _update(self) -> None:
        if self.artifact_id is None:
            return
        self._shown, self._shown_at = self.percent, _clock()
        # one update after the other, so a late 90% never lands after the 100%
        self._last = asyncio.get_running_loop().create_task(
            _send(self.artifact_id, self.percent, self.description(), after=self._last)
        )

    async def finish(self) -> None:
        if self._shown < self.percent or self.done < self.total:
            self._update()
        if self._last is not None:
            await asyncio.gather(self._last, return_exceptions=True)


async def _send(
    artifact_id: UUID, percent: float, description: str, after: asyncio.Task[None] | None
) -> None:
    if after is not None:
        await asyncio.gather(after, return_exceptions=True)
    try:
        await aupdate_progress_artifact(
            artifact_id=artifact_id, progress=percent, description=description
        )
    except Exception as exc:  # a missed update is not worth a failed batch
        log.debug("progress artifact update skipped: %s", exc)


def image_progress(batch_id: str) -> ImageProgress | None:
    """The tracker of a batch whose image step runs in this process, if any."""
    return _trackers.get(batch_id)


@asynccontextmanager
async def tracked_images(batch_id: str, total: int) -> AsyncIterator[ImageProgress]:
    """Create the batch's progress artifact for `total` images and track it meanwhile."""
    artifact_id: UUID | None = None
    try:
        artifact_id = await acreate_progress_artifact(
            progress=0.0, description=f"Images: 0/{total} made"
        )
    except Exception as exc:  # e.g. outside a run: no artifact, the batch goes on
        log.debug("no progress artifact: %s", exc)
    tracker = ImageProgress(artifact_id, total)
    _trackers[batch_id] = tracker
    try:
        yield tracker
    finally:
        _trackers.pop(batch_id, None)
        await tracker.finish()
