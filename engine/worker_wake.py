"""A worker held back by its `--limit` looks for the next run as soon as one of its runs ends.

WORKAROUND (none filed found): Prefect's worker asks for scheduled runs every
PREFECT_WORKER_QUERY_SECONDS (a clamped-Poisson interval, +-30 %), whether or not a slot
of its `--limit` came free; a run that waited behind the limit starts at the next poll,
on average half an interval after the slot freed, plus the poll's own round trip (issue
20: 0.1-0.6 s at the end of each wave of six 10-piece batches, with the README's 0.5 s).
Installed by `prefect_collection.py`, the door Prefect opens into the worker process:
once a run's submission ends (its process exited and Prefect's own `finally` released
the slot), the worker polls once more at once, one such poll at a time (a run that ends
while one is under way asks for another after it); its regular poll goes on as before.
Only for a worker with a `--limit`: without one nothing waits for a slot.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

log = logging.getLogger(__name__)

_MARK = "_studio_polls_when_a_run_ends"


def install() -> None:
    """Wrap the worker's per-run submission (idempotent)."""
    from prefect.workers.base import BaseWorker

    submit = BaseWorker._submit_run_and_capture_errors
    if getattr(submit, _MARK, False):
        return

    @functools.wraps(submit)
    async def submit_then_poll(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await submit(self, *args, **kwargs)
        finally:
            poll_soon(self)

    setattr(submit_then_poll, _MARK, True)
    BaseWorker._submit_run_and_capture_errors = submit_then_poll  # type: ignore[method-assign]


def poll_soon(worker: Any) -> None:
    """Start a poll of `worker` now, or once the one under way is done."""
    group = getattr(worker, "_runs_task_group", None)
    if group is None or getattr(worker, "_limiter", None) is None:
        return
    if getattr(worker, "_studio_poll_running", False):
        worker._studio_poll_again = True
        return
    worker._studio_poll_running = True
    try:
        group.start_soon(_polls, worker)
    except RuntimeError:  # the worker is stopping: its task group takes no more work
        worker._studio_poll_running = False


async def _polls(worker: Any) -> None:
    try:
        while True:
            worker._studio_poll_again = False
            try:
                await worker.get_and_submit_flow_runs()
            except Exception as exc:  # the regular poll goes on (it reports its own errors)
                log.debug("Poll after a run ended failed (%s)", type(exc).__name__)
            if not worker._studio_poll_again:
                return
    finally:
        worker._studio_poll_running = False
