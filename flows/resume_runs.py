"""Which resumes of a batch are already on their way, whoever asked for them.

Why: crash recovery (tag `auto-resume:<batch>`) and an operator's `studio batch resume`
(tag `resumes:<batch>`, the batch id being its first run's id) may both want to resume
the same crashed batch. Each asks here first and leaves the batch to a resume that is
already scheduled or running; the batch lease (studio/db/batch_lease.py) covers the
moment when both asked at once.
"""

from __future__ import annotations

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun

from flows.batch_state_hooks import AUTO_RESUME_TAG, RESUMES_TAG_PREFIX


async def resumes_on_their_way(client: PrefectClient, batch_id: str) -> list[FlowRun]:
    """The runs resuming `batch_id` that have not ended (any tag a resume carries)."""
    runs = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(
                any_=[f"{AUTO_RESUME_TAG}:{batch_id}", f"{RESUMES_TAG_PREFIX}{batch_id}"]
            )
        )
    )
    return [run for run in runs if run.state is not None and not run.state.is_final()]


def who_resumes(run: FlowRun) -> str:
    """crash-recovery or operator, from the run's tags."""
    return "crash-recovery" if AUTO_RESUME_TAG in (run.tags or []) else "operator"
