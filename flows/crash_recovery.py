"""The `crash-recovery` flow: resume crashed and timed-out batches, with bounded attempts.

Started by the crash itself: the "studio: crashed batches resumed" automation
(deployments/automations.py, created by `studio automations apply`) runs this
deployment when a content-batch run ends Crashed (a process killed -9 is marked so by
the zombie-run automation when its heartbeats stop) or TimedOut. A schedule every
15 min (prefect.yaml) is only the safety net for a crash event the server missed.
Each run looks for content-batch runs that ended Crashed or TimedOut, and for each
batch they left unfinished it writes the ending onto the row and starts the run's
deployment again with `resume_batch_id`: tagged `auto-resume`, `auto-resume:<batch>`
and `resumes:<run id>`, named after the run it resumes, with the idempotency key
`auto-resume:<batch>:<attempt>` (two recoveries racing create one run per attempt).
After AUTO_RESUME_MAX_ATTEMPTS (3) resumes that did not finish the batch, the batch
ends `failed` with the reason, and is never resumed again.

Why the automation runs a reconciler rather than resuming the run itself: an
automation fires once per event and cannot read the database, so it cannot count
attempts, see that an operator already finished the batch, refuse to loop, or mark
the batch failed when it gives up. The reconciler reads both truths (the Prefect runs
and the batch row) and acts on what they say now, so whichever starts it (the event
or the safety-net schedule) the outcome is the same, and a lost event is caught by
the next scheduled run instead of every minute's.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_client
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateName,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort

from engine.run_logs import attach_run_logs
from engine.strict_parameters import refuse_unknown_parameter_runs
from flows.batch_state_hooks import AUTO_RESUME_TAG, RESUMES_TAG_PREFIX, batch_id_of
from flows.resume_runs import resumes_on_their_way
from flows.resume_settings import original_job_variables
from flows.schema_gate import schema_refusal
from studio import batchlog
from studio.db import batch_endings
from studio.db.engine import session_scope
from studio.request import resume_parameters
from studio.settings import get_settings

log = logging.getLogger("studio.recovery")

#: the flow whose runs are recovered, and the deployment used when a run had none
BATCH_FLOW = "content-batch"
DEFAULT_DEPLOYMENT = "content-batch/on-demand"
#: final states that leave a batch unfinished and call for a resume
INTERRUPTED_STATES = ["Crashed", "TimedOut"]


@flow(name="crash-recovery", flow_run_name="crash-recovery", log_prints=False, retries=0)
async def crash_recovery(
    max_attempts: int | None = None,
    lookback_hours: float = 24.0,
    deployment: str = DEFAULT_DEPLOYMENT,
) -> dict[str, str]:
    """Resume every batch a crashed or timed-out run left unfinished; returns what was
    done, per batch id (resumed, waiting for a resume, gave up, nothing to do)."""
    settings = get_settings()
    batchlog.configure_logging(settings.log_file, settings.log_level)
    attach_run_logs()  # its "Crash recovery | ..." lines to its run's logs and app.log
    if refused := schema_refusal("Crash recovery"):  # no studio schema: one line
        return refused  # type: ignore[return-value]
    limit = settings.auto_resume_max_attempts if max_attempts is None else max_attempts
    since = datetime.now(UTC) - timedelta(hours=lookback_hours)
    async with get_client() as client:
        ended = await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[BATCH_FLOW])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(name=FlowRunFilterStateName(any_=INTERRUPTED_STATES)),
                expected_start_time=FlowRunFilterExpectedStartTime(after_=since),
            ),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=200,  # the API's maximum page: the latest 200 interrupted runs
        )
        if ended:
            # a run created with parameters the flow does not take crashed in Prefect's
            # engine before any flow code ran: it ends Refused naming them, never resumed.
            # Imported here: a safety-net run that finds no crash (most of them) does not
            # load the batch flow and all it imports (issue 20: maintenance kept cheap)
            from flows.content_batch import content_batch

            ended = await refuse_unknown_parameter_runs(client, content_batch.fn, ended)
        by_batch: dict[str, list[FlowRun]] = {}
        for run in ended:
            by_batch.setdefault(batch_id_of(run), []).append(run)
        outcome = {}
        for batch_id, runs in by_batch.items():
            outcome[batch_id] = await recover_batch(client, batch_id, runs, limit, deployment)
    for batch_id, what in outcome.items():
        if what != "finished":
            log.info("Crash recovery | Batch: %s | %s", batch_id, what)
    return outcome


async def recover_batch(
    client: PrefectClient, batch_id: str, ended: list[FlowRun], max_attempts: int, deployment: str
) -> str:
    """One batch: resume it, wait for its resume, or give up after `max_attempts`."""
    row = await asyncio.to_thread(_batch_status, batch_id)
    if row is None:
        return "no batch row (its run ended before planning): nothing to resume"
    status, config = row
    if status in batch_endings.FINISHED or status == "cancelled":
        return "finished"
    attempts = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[f"{AUTO_RESUME_TAG}:{batch_id}"])
        )
    )
    if await resumes_on_their_way(client, batch_id):  # crash recovery's or an operator's
        return "a resume is on its way"
    latest = max([*ended, *attempts], key=_started)
    if latest.state is None or latest.state.name not in INTERRUPTED_STATES:
        return "finished"  # its latest run ended otherwise; the row follows that run
    ending = "timed_out" if latest.state.name == "TimedOut" else "crashed"
    reason = f"run {latest.name} ({latest.id}) ended {latest.state.name}"
    await asyncio.to_thread(_end, batch_id, ending, reason)
    if len(attempts) >= max_attempts:
        why = f"automatic resume gave up after {len(attempts)} attempt(s); last {reason}"
        await asyncio.to_thread(_give_up, batch_id, why)
        await _settle_dead_rows(batch_id)  # nothing resumes it: its open ledger rows settle now
        log.error("Batch FAILED | Batch: %s | %s", batch_id, why)
        return f"gave up: {why}"
    attempt = len(attempts) + 1
    deployment_id = latest.deployment_id or next(
        (r.deployment_id for r in ended if r.deployment_id), None
    )
    if deployment_id is None:
        deployment_id = (await client.read_deployment_by_name(deployment)).id
    run = await client.create_flow_run_from_deployment(
        deployment_id,
        parameters=resume_parameters(batch_id, config),
        name=f"resume-{batch_id[:8]}-attempt-{attempt}-of-{latest.name}"[:200],
        tags=[AUTO_RESUME_TAG, f"{AUTO_RESUME_TAG}:{batch_id}", f"{RESUMES_TAG_PREFIX}{latest.id}"],
        idempotency_key=f"{AUTO_RESUME_TAG}:{batch_id}:{attempt}",
        # the original run's settings, not the worker's (flows/resume_settings.py)
        job_variables=await original_job_variables(client, batch_id, [*ended, *attempts]),
    )
    log.warning(
        "Batch auto-resumed | Batch: %s | Attempt: %d/%d | Run: %s | Resumes: %s (%s)",
        batch_id,
        attempt,
        max_attempts,
        run.id,
        latest.id,
        latest.state.name,
    )
    return f"resumed (attempt {attempt}/{max_attempts}) by run {run.id}"


def _started(run: FlowRun) -> datetime:
    moment = run.start_time or run.expected_start_time or run.created
    return moment or datetime.min.replace(tzinfo=UTC)


def _batch_status(batch_id: str) -> tuple[str, dict[str, Any]] | None:
    with session_scope() as session:
        return batch_endings.batch_status(session, batch_id)


def _end(batch_id: str, status: str, reason: str) -> None:
    with session_scope() as session:
        batch_endings.end_batch(session, batch_id, status, reason)


async def _settle_dead_rows(batch_id: str) -> None:
    """A batch given up is never resumed, so its dead runs' open ledger rows are settled
    here (studio/ledger/dead_runs.py), asked with this run's provider settings."""
    from studio.ledger.dead_runs import settle_dead_rows
    from studio.providers.job_lookup import ProviderJobLookup

    try:
        await settle_dead_rows(batch_id, ProviderJobLookup())
    except Exception as exc:  # left open: `studio batch resume` of the batch settles them
        log.warning("Dead-run rows not settled | Batch: %s | Error: %s", batch_id,
                    type(exc).__name__)


def _give_up(batch_id: str, reason: str) -> None:
    with session_scope() as session:
        batch_endings.give_up(session, batch_id, reason)
