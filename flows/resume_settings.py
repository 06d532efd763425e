"""What a resume runs with: the original run's deployment and job variables (issue 16).

WHY: a batch's provider endpoints and keys may reach its run through the job variables
it was created with (`job_variables={"env": {...}}` on `create_flow_run`, the UI's
"Job variables" field), not through the worker's environment. A resume created without
them ran on a worker lacking those settings and fell back to the preview renderer. So
every resume, automatic or by hand, is created on the original run's deployment with
the original run's job variables; Prefect stores them on the flow run
(`FlowRun.job_variables`), so any process can read them back.

The original run is the one whose id is the batch id (a batch's id defaults to its
first run's id); a batch started with an explicit `batch_id` falls back to the earliest
run of the batch that carried job variables.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound

log = logging.getLogger("studio.recovery")


def _when(run: FlowRun) -> datetime:
    moment = run.start_time or run.expected_start_time or run.created
    return moment or datetime.min.replace(tzinfo=UTC)


async def original_run(
    client: PrefectClient, batch_id: str, known: Iterable[FlowRun] = ()
) -> FlowRun | None:
    """The batch's first run: the run whose id is the batch id, else the earliest known."""
    runs = list(known)
    for run in runs:
        if str(run.id) == batch_id:
            return run
    try:
        return await client.read_flow_run(UUID(batch_id))
    except (ObjectNotFound, ValueError):
        pass
    return min(runs, key=_when) if runs else None


async def original_job_variables(
    client: PrefectClient, batch_id: str, known: Iterable[FlowRun] = ()
) -> dict[str, Any]:
    """The job variables the batch's original run was created with ({} when none)."""
    runs = list(known)
    first = await original_run(client, batch_id, runs)
    if first is not None and first.job_variables:
        return dict(first.job_variables)
    for run in sorted(runs, key=_when):  # an explicit batch_id: the earliest that had some
        if run.job_variables:
            return dict(run.job_variables)
    return {}
