"""`studio batch submit` and `studio batch status`: batches run by the workers.

`submit` takes `batch run`'s options and validation (bad input exits 2 before the API
is called, nothing is sent) plus `--idempotency-key`, and creates a run of the
`content-batch/on-demand` deployment: whichever worker of the pool is free takes it.
`status` prints a batch's state, step, counts and cost, one source for each
(studio/batch_status.py); with no PREFECT_API_URL it reads the local Prefect API that
`batch run` uses. No Prefect server at the configured URL: exit 1, naming the URL
(status still prints what the database knows).
A server that refuses the credential: one line naming PREFECT_API_AUTH_STRING and the
URL, exit 1, for both.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, NoReturn

import typer

from cli.batch_options import batch_options
from cli.output import console, environment_problem, err, print_json, refuse
from studio.batch_status import BatchStatus, RunFacts, read_rows, run_ids_of, step_from_log
from studio.request import BatchRequest, BatchRequestError


@batch_options
def submit(
    request: BatchRequest,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            help="submitting again with the same key returns the first run instead of a new one",
        ),
    ] = None,
) -> None:
    """Send one content batch to the workers (the content-batch/on-demand deployment)."""
    from tasks.validate import validate_batch_request

    try:
        validated = validate_batch_request(request)
    except BatchRequestError as exc:
        refuse(exc)
        return
    # the avatar by name: the run (and its name, content-batch-<name>-<pieces>) reads as such;
    # the request resolved against the avatar's profile, so the run says what it makes
    resolved = validated.request
    parameters = {**resolved.run_parameters(), "avatar_id": validated.avatar.name}
    run_name = f"content-batch-{validated.avatar.name}-{resolved.num_pieces}"
    submitted = _call_server(_submit(parameters, run_name, idempotency_key))
    from deployments.api import api_url, flow_run_link

    run = submitted.run
    if submitted.existing:
        console.print(
            f"already submitted with idempotency key {idempotency_key!r}: nothing new started"
        )
    console.print(f"run {run.id} ({run.name}) on {api_url()}, state {run.state_name}")
    console.print(flow_run_link(run.id))


async def _submit(parameters: dict[str, Any], run_name: str, key: str | None):  # type: ignore[no-untyped-def]
    from deployments.api import server_client
    from flows.batch_runs import submit_batch

    async with server_client() as client:
        return await submit_batch(client, parameters, run_name, key)


def status(
    run_or_batch_id: Annotated[str, typer.Argument(help="a flow run id or a batch id")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (for scripts)")] = False,
) -> None:
    """Print a batch's state, the step it is at, its pieces' counts and its cost (one
    source each: see studio/batch_status.py)."""
    from deployments.api import CredentialRefused
    from engine import local_server
    from studio.request import parse_batch_id

    try:
        wanted_id = parse_batch_id("id", run_or_batch_id) or ""
    except BatchRequestError as exc:
        refuse(exc)
    # locally (no PREFECT_API_URL) the runs are on the local API `batch run` uses
    server = local_server.ensure_started()
    try:
        with local_server.api_of(server) as local_url:
            # the local API serves no UI: no link to print
            report, server_problem = asyncio.run(_read_status(wanted_id, links=not local_url))
    except CredentialRefused as exc:
        _unreachable(str(exc))
    if report is None:
        if server_problem:
            _unreachable(server_problem)
        refuse(BatchRequestError("id", f"no flow run or batch with id {run_or_batch_id!r}"))
    if as_json:
        print_json(report.as_json())
    else:
        for line in report.lines():
            console.print(line, highlight=False, soft_wrap=True, markup=False)
    if server_problem:
        err.print(f"[yellow]prefect[/yellow]: {server_problem}", highlight=False, soft_wrap=True)


async def _read_status(
    wanted_id: str, links: bool = True
) -> tuple[BatchStatus | None, str | None]:
    """The batch's facts from Prefect (its runs) and the database (rows, ledger, owner)."""
    from deployments.api import ServerUnreachable, server_client
    from flows.batch_runs import batch_id_of, read_run
    from studio.batch_owner import owner_of
    from studio.db.engine import session_scope

    problem = None
    try:
        async with server_client() as client:
            given = await read_run(client, wanted_id)
            report = BatchStatus(batch_id=batch_id_of(given) if given else wanted_id)
            with session_scope() as session:
                known = read_rows(session, report)
                run_ids = run_ids_of(session, report.batch_id)
            runs = await _batch_runs(client, report.batch_id, run_ids, links)
            if runs:
                report.run, report.earlier_runs = runs[-1], runs[:-1]
                if report.run.state in ("Running", "Retrying"):
                    report.run.log_step = step_from_log(
                        await _log_messages(client, report.run.id)
                    )
    except ServerUnreachable as exc:
        problem = str(exc)
        report = BatchStatus(batch_id=wanted_id)
        with session_scope() as session:
            known = read_rows(session, report)
    owner = owner_of(report.batch_id)
    # only the run the killed process ran is stale (a resume queued since is not)
    stale = owner is not None and (report.run is None or report.run.id == owner.run_id)
    if owner is not None and stale and not owner.alive():
        report.local_owner_gone = f"pid {owner.pid} on {owner.host}"
    if report.run is None and not known:
        return None, problem
    return report.derive(), problem


async def _batch_runs(
    client: Any, batch_id: str, run_ids: list[str], links: bool = True
) -> list[RunFacts]:
    """The batch's runs, oldest first: those the row knows (the run that made it, the
    resumes that started) and resumes created but not started yet (tagged
    `resumes:<run>` or `auto-resume:<batch>` by `batch resume` and crash recovery)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from deployments.api import flow_run_link
    from flows.batch_runs import read_run

    found = {}
    for run_id in run_ids:
        run = await read_run(client, run_id)
        if run is not None:
            found[str(run.id)] = run
    wanted_tags = [f"resumes:{run_id}" for run_id in run_ids] + [f"auto-resume:{batch_id}"]
    for run in await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(any_=wanted_tags)), limit=50
    ):
        found.setdefault(str(run.id), run)
    ordered = sorted(found.values(), key=lambda run: run.created or run.expected_start_time)
    return [
        RunFacts(
            id=str(run.id),
            name=run.name,
            state=run.state.name if run.state else None,
            message=run.state.message if run.state else None,
            link=flow_run_link(run.id) if links else None,
        )
        for run in ordered
    ]


async def _log_messages(client: Any, run_id: str) -> list[str]:
    from uuid import UUID

    from flows.batch_runs import newest_log_messages

    return await newest_log_messages(client, UUID(run_id))


def _call_server(work):  # type: ignore[no-untyped-def]
    """Run one API conversation; report an unreachable server, a missing deployment (1)
    or parameters the server's schema refused (2) the way every command does."""
    from deployments.api import CredentialRefused, ServerUnreachable
    from flows.batch_runs import NoBatchDeployment, RunRefused

    try:
        return asyncio.run(work)
    except (ServerUnreachable, CredentialRefused, NoBatchDeployment) as exc:
        _unreachable(str(exc))
    except RunRefused as exc:
        refuse(BatchRequestError("parameters", f"refused by the server: {exc.detail}"))


def _unreachable(message: str) -> NoReturn:
    environment_problem(message)


def register(batch_app: typer.Typer) -> None:
    batch_app.command("submit")(submit)
    batch_app.command("status")(status)
