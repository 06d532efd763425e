"""The `studio` command: initialise, manage avatars, run batches, read stats and health.

Bad input exits with code 2 and a one-line message naming the field, before any flow
run starts, so nothing is spent or written for a request that cannot succeed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from studio.runtime_env import apply_prefect_defaults

apply_prefect_defaults()

from cli.automations import automations_app  # noqa: E402
from cli.avatars import avatar_app  # noqa: E402
from cli.batch_options import VerboseOption, batch_options  # noqa: E402
from cli.limits import limits_app  # noqa: E402
from cli.local_server import local_server_app  # noqa: E402
from cli.output import batch_failed, console, print_json, refuse  # noqa: E402
from cli.review import review_app  # noqa: E402
from studio.request import BatchRequest, BatchRequestError  # noqa: E402

app = typer.Typer(help="Content batch pipeline for AI-avatar studios.", no_args_is_help=True)
batch_app = typer.Typer(help="Run content batches.", no_args_is_help=True)
app.add_typer(avatar_app, name="avatar")
app.add_typer(batch_app, name="batch")
app.add_typer(limits_app, name="limits")
app.add_typer(automations_app, name="automations")
app.add_typer(local_server_app, name="local-server")
app.add_typer(review_app, name="review")


@app.command()
def init() -> None:
    """Create or migrate the database and load the bundled template library."""
    from studio.bootstrap import initialise

    summary = initialise()
    console.print(
        f"database ready at {summary['database']} ({summary['templates']} templates loaded)"
    )


@app.command()
def demo(
    pieces: Annotated[int, typer.Option("--pieces")] = 50, verbose: VerboseOption = False
) -> None:
    """Initialise, create the `demo` avatar if missing, and run a batch on the defaults."""
    from engine import local_server

    local_server.ensure_started()  # boots while the database is initialised
    from studio.bootstrap import DEMO_AVATAR, ensure_demo_avatar, initialise

    initialise()
    ensure_demo_avatar()
    batch_run(avatar=DEMO_AVATAR, pieces=pieces, verbose=verbose)


@batch_app.command("run")
@batch_options
def batch_run(request: BatchRequest, verbose: VerboseOption = False) -> None:
    """Run one content batch for an avatar, with a progress bar."""
    if verbose:
        from studio.batchlog import show_everything_on_console

        show_everything_on_console()
    from engine import local_server

    server = local_server.ensure_started()  # boots while the pipeline is imported

    from tasks.validate import validate_batch_request

    try:
        validate_batch_request(request)
    except BatchRequestError as exc:
        refuse(exc)
        return
    import flows.content_batch  # noqa: F401  (imported while the server boots)

    with local_server.api_of(server):
        result = _run_with_progress(request)
    _print_result(result)


def _run_with_progress(request: BatchRequest):  # type: ignore[no-untyped-def]
    from cli.local_run import OwnerMarker
    from flows.content_batch import content_batch
    from studio import progress_events

    owner = OwnerMarker()  # a killed command leaves its batch `interrupted`, not running
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task_ids: dict[str, int] = {}

        def listener(step: str, done: int, total: int) -> None:
            if step not in task_ids:
                task_ids[step] = bar.add_task(step, total=total)
            bar.update(task_ids[step], completed=done, total=total)

        progress_events.subscribe(listener)
        progress_events.subscribe(owner)
        try:
            return asyncio.run(content_batch(**request.run_parameters()))
        except BatchRequestError as exc:
            refuse(exc)
        except Exception as exc:
            batch_failed(exc)
        finally:
            progress_events.unsubscribe(listener)
            progress_events.unsubscribe(owner)
            owner.release()


def _print_result(result) -> None:  # type: ignore[no-untyped-def]
    console.print(
        f"[bold]batch {result.batch_id}[/bold]: {result.published}/{result.requested} published,"
        f" {result.rejected} rejected, {result.failed} failed, {result.pending_review} pending"
        f" review; cost ${result.cost_usd:.2f}; {result.total_seconds:.1f}s",
        soft_wrap=True,  # one line: scripts read the batch id from it
    )
    for piece in result.pieces:
        if piece.status.value in ("rejected", "failed", "pending_review"):
            console.print(f"  piece {piece.index} {piece.status.value}: {piece.reason}")
    if result.stand_ins:
        console.print(f"stand-ins used: {', '.join(result.stand_ins)}")


@app.command()
def stats(
    avatar: Annotated[str, typer.Option("--avatar", help="avatar id or name")],
    as_json: Annotated[bool, typer.Option("--json", help="plain JSON, no colours")] = False,
) -> None:
    """Aggregates for one avatar, computed by the database (JSON either way)."""
    from studio.avatars import find_avatar
    from studio.db.engine import session_scope
    from studio.stats import avatar_stats

    with session_scope() as session:
        found = find_avatar(session, avatar)
        if found is None:
            refuse(BatchRequestError("avatar", f"no avatar with id or name {avatar!r}"))
            return
        figures = avatar_stats(session, found.id)
    if as_json:
        print_json(figures)
    else:
        console.print_json(json.dumps(figures, default=str))


@app.command()
def health() -> None:
    """The spec's health JSON, every provider and store probed (exit 1 when unhealthy)."""
    from prefect.settings import PREFECT_API_URL

    from studio.health import health_report

    report = health_report(prefect_api_url=PREFECT_API_URL.value())
    console.print_json(json.dumps(report, default=str))
    if report["status"] == "unhealthy":  # degraded works, on a fallback or a stand-in
        raise typer.Exit(code=1)


from cli.storage import register as _register_storage  # noqa: E402

_register_storage(app, batch_app)  # batch resume, storage-sync, seed-history

from cli.submit import register as _register_submit  # noqa: E402

_register_submit(batch_app)  # batch submit, batch status (runs the workers take)

from cli.batch_list import batch_list  # noqa: E402

batch_app.command("list")(batch_list)  # batch list: newest first, filters, --json

from cli.server import register as _register_server  # noqa: E402

_register_server(app)  # server: prefect server start with durable leases

from cli.templates import templates_app  # noqa: E402

app.add_typer(templates_app, name="templates")  # templates list, templates import

from cli.schema import schema_guard  # noqa: E402

app.callback()(schema_guard)  # a database command before `studio init`: one line, exit 1

from cli.workflow import workflow_app  # noqa: E402

app.add_typer(workflow_app, name="workflow")  # workflow check: a ComfyUI workflow file


if __name__ == "__main__":  # pragma: no cover
    app()
