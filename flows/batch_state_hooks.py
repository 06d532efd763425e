"""State hooks of the content-batch flow: a run that does not finish still writes its row.

Why: finish_batch (tasks/save.py) runs only when a batch gets to its end. A run that
times out (BATCH_GENERATION_TIMEOUT: Prefect's TimedOut, a Failed state), crashes, is
cancelled or fails before step 6 would leave the row `running` for good, while
Prefect says otherwise. These hooks write the same ending onto the row (see
studio/db/batch_endings.py). A process killed -9 runs no hook: the zombie automation
marks its run Crashed and the crash-recovery flow (flows/crash_recovery.py) writes
the row and resumes it.
"""

from __future__ import annotations

import logging
from typing import Any

from studio.db import batch_endings
from studio.db.engine import session_scope

log = logging.getLogger("studio.batch")

#: tag of a run started by the crash-recovery flow, and the prefix naming the run it resumes
AUTO_RESUME_TAG = "auto-resume"
RESUMES_TAG_PREFIX = "resumes:"


def batch_id_of(flow_run: Any) -> str:
    """The batch a content-batch run works on: resume_batch_id, batch_id, else its run id."""
    params = dict(getattr(flow_run, "parameters", None) or {})
    return str(params.get("resume_batch_id") or params.get("batch_id") or flow_run.id)


def ending_of(state: Any) -> str:
    """The row status for a run's final state."""
    if state.name == "TimedOut":
        return "timed_out"
    if state.is_crashed():
        return "crashed"
    if state.is_cancelled() or state.is_cancelling():
        return "cancelled"
    return "failed"


def write_ending(flow: Any, flow_run: Any, state: Any) -> None:
    """on_failure / on_crashed / on_cancellation: the row says what Prefect says."""
    if state.name == "Refused":  # a refused request changed nothing; neither does its end
        return
    batch_id = batch_id_of(flow_run)
    status = ending_of(state)
    params = getattr(flow_run, "parameters", None) or {}
    resuming = bool(params.get("resume_batch_id"))
    reason = f"run {flow_run.id} ended {state.name}: {state.message or 'no message'}"
    try:
        with session_scope() as session:
            changed = batch_endings.end_batch(
                session, batch_id, status, reason, run_id=str(flow_run.id), resuming=resuming,
                avatar=params.get("avatar_id"),
            )
    except Exception as exc:  # the crash-recovery flow reconciles what a hook could not write
        log.error("Batch ending not written | Batch: %s | %s", batch_id, exc)
        return
    if changed:
        log.warning("Batch %s | Batch: %s | %s", status.upper(), batch_id, reason)


def record_resume(batch_id: str, run_id: str, tags: list[str]) -> None:
    """A run resumes a batch: by whom (crash-recovery or operator), when, of which run."""
    by = "crash-recovery" if AUTO_RESUME_TAG in tags else "operator"
    prefix = RESUMES_TAG_PREFIX
    resumes = next((t[len(prefix) :] for t in tags if t.startswith(prefix)), None)
    with session_scope() as session:
        batch_endings.note_resume(session, batch_id, run_id, by, resumes)
    log.info(
        "Batch resumed | Batch: %s | Run: %s | By: %s | Resumes: %s",
        batch_id,
        run_id,
        by,
        resumes or "-",
    )


BATCH_STATE_HOOKS: dict[str, list[Any]] = {
    "on_failure": [write_ending],
    "on_crashed": [write_ending],
    "on_cancellation": [write_ending],
}
