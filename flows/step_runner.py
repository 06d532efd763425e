"""What every step of a content batch does besides its own work, written once.

Each of the spec's seven steps is timed, works only on what an earlier run of the
batch left unfinished (resume), records what it made the moment it exists, merges that
with what the earlier run finished, advances the progress bar and ends with the spec's
`[STEP n/7]` line. `BatchSteps.step` owns all of that, so the flow's body
(flows/content_batch.py) shows only what each step does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from studio import batchlog, progress_events
from studio.types import GeneratedImage, Hook, PieceSpec, SafetyVerdict, StoredObject
from tasks.piece_progress import record_progress

log = logging.getLogger("studio.batch")

T = TypeVar("T")
#: what a step makes per piece and records as the piece's progress
Made = TypeVar("Made", GeneratedImage, Hook, SafetyVerdict, StoredObject)

#: the progress bar of the whole batch, one unit per step (cli/local_run.py listens to it)
BATCH_STEPS = "batch steps"
#: each step's key in BatchResult.step_seconds
STEP_KEYS = {
    1: "template_selection",
    2: "image_generation",
    3: "hook_generation",
    4: "safety_check",
    5: "storage_upload",
    6: "database_save",
    7: "statistics",
}


def chunked(items: list[T], size: int) -> list[list[T]]:
    """`items` in consecutive groups of at most `size` (image chunks, hook groups)."""
    return [items[i : i + size] for i in range(0, len(items), size)]


class Step:
    """One step in progress: what is left, what it made, what its line says."""

    def __init__(self) -> None:
        self.details = ""
        self.closing: str | Callable[[float], str] = ""
        self._earlier: dict[str, Any] = {}

    def left(self, specs: list[PieceSpec], earlier: Mapping[str, Any]) -> list[PieceSpec]:
        """The pieces of `specs` that `earlier` (what an earlier run finished) lacks."""
        self._earlier = dict(earlier)
        return [spec for spec in specs if spec.piece_id not in earlier]

    def record(self, kind: str, made: dict[str, Made]) -> dict[str, Made]:
        """Record `made` as the pieces' `kind` progress, durable before the next step
        starts; return it merged over what `left` was told was finished earlier."""
        record_progress(kind, list(made.values()))
        return {**self._earlier, **made}

    def says(self, details: str, extra: str | Callable[[float], str] = "") -> None:
        """What the step line says; `extra` (its last part) may need the duration."""
        self.details, self.closing = details, extra


class BatchSteps:
    """The batch's step timings and progress bar; `step(n)` runs step n's bookkeeping."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        progress_events.start(BATCH_STEPS, len(STEP_KEYS))

    def elapsed(self) -> float:
        """Seconds since the batch started (a message batch may use what is left)."""
        return time.perf_counter() - self.started

    @contextmanager
    def step(self, number: int) -> Iterator[Step]:
        """Time the block as step `number`, then advance the bar and log its line."""
        current = Step()
        began = time.perf_counter()
        yield current
        seconds = time.perf_counter() - began
        self.seconds[STEP_KEYS[number]] = seconds
        progress_events.advance(BATCH_STEPS)
        closing = current.closing(seconds) if callable(current.closing) else current.closing
        log.info(batchlog.step_line(number, current.details, seconds, closing))
