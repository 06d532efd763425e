"""A batch run in the command's own process (`batch run`, `demo`, `batch resume`):
its owner marker (studio/batch_owner.py) is written as the batch starts and removed as
it ends, so a killed command leaves a batch `batch status` calls interrupted.

Why a progress listener: the batch id is known only inside the run (the flow run's id,
or the batch it resumes); the flow announces its 7 steps from inside the run, in this
process, so the listener reads the id from Prefect's runtime context right then.
"""

from __future__ import annotations

from studio import batch_owner


class OwnerMarker:
    """Subscribe it to studio.progress_events for the run; call `release()` when it returns."""

    def __init__(self) -> None:
        self.batch_id: str | None = None

    def __call__(self, step: str, done: int, total: int) -> None:
        if step != "batch steps" or done != 0 or self.batch_id is not None:
            return
        from prefect.runtime import flow_run

        run_id = flow_run.get_id()
        params = flow_run.get_parameters() or {}
        batch_id = params.get("resume_batch_id") or params.get("batch_id") or run_id
        if batch_id:
            self.batch_id = str(batch_id)
            batch_owner.claim(self.batch_id, run_id)

    def release(self) -> None:
        if self.batch_id is not None:
            batch_owner.release(self.batch_id)
