"""Batches sent to the workers through the Prefect API, and read back.

`studio batch submit` creates a run of the `content-batch/on-demand` deployment (the
same one the scheduled fan-out uses), so whichever worker of the pool is free takes it;
`studio batch status` reads the run's state and its newest spec log lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentFlowRunCreate
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import LogSort
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.settings import get_current_settings

from engine.created_runs import existed_before, submission_tag

#: the deployment a batch runs as (prefect.yaml, deployments/serve.py, flows/scheduled.py)
BATCH_DEPLOYMENT = "content-batch/on-demand"


class NoBatchDeployment(Exception):
    def __init__(self) -> None:
        api = get_current_settings().api.url or "http://127.0.0.1:4200/api"  # Prefect's default
        super().__init__(
            f"no deployment {BATCH_DEPLOYMENT} on {api}; register it with "
            "`prefect deploy --all` (or serve it with `python -m deployments.serve`)"
        )


class RunRefused(Exception):
    """The server refused the run's parameters (its schema); `detail` is its reason."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class SubmittedBatch:
    run: FlowRun
    #: True when the idempotency key matched a run submitted before: nothing new started
    existing: bool


async def submit_batch(
    client: PrefectClient,
    parameters: dict[str, Any],
    run_name: str,
    idempotency_key: str | None = None,
) -> SubmittedBatch:
    """One run of the batch deployment; when the idempotency key already has a run, that
    run is returned unchanged (`existing`)."""
    try:
        deployment = await client.read_deployment_by_name(BATCH_DEPLOYMENT)
    except ObjectNotFound:
        raise NoBatchDeployment() from None
    marker = submission_tag() if idempotency_key else None  # tells a new run from a found one
    body = DeploymentFlowRunCreate(
        name=run_name, parameters=parameters, idempotency_key=idempotency_key,
        **({"tags": [marker]} if marker else {}),
    ).model_dump(mode="json", exclude_unset=True)
    try:
        response = await client.request(
            "POST",
            "/deployments/{id}/create_flow_run",
            path_params={"id": deployment.id},
            json=body,
        )
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code in (400, 409, 422):
            raise RunRefused(_detail(exc)) from None
        raise
    run = FlowRun.model_validate(response.json())
    return SubmittedBatch(run=run, existing=existed_before(run, marker))


async def read_run(client: PrefectClient, run_id: str) -> FlowRun | None:
    try:
        return await client.read_flow_run(UUID(run_id))
    except (ValueError, ObjectNotFound):
        return None


async def newest_log_messages(client: PrefectClient, run_id: UUID, limit: int = 200) -> list[str]:
    """The run's own log messages, newest first (the spec's step lines are among them)."""
    logs = await client.read_logs(
        log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
        limit=limit,
        sort=LogSort.TIMESTAMP_DESC,
    )
    return [entry.message for entry in logs]


def batch_id_of(run: FlowRun) -> str:
    """A run's batch: the one it resumes or was given, else the run's own id."""
    params = run.parameters or {}
    return str(params.get("resume_batch_id") or params.get("batch_id") or run.id)


def _detail(exc: PrefectHTTPStatusError) -> str:
    try:
        return str(exc.response.json().get("detail") or exc.response.text)
    except ValueError:
        return exc.response.text
