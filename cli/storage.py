"""CLI commands for persistence: resume a crashed batch, sync local files, seed history.

Registered on the main `studio` app by `register(app, batch_app)` (see cli/app.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from cli.output import batch_failed, console, refuse
from cli.pieces import pieces
from studio.request import BatchRequestError, parse_batch_id, resume_parameters


def resume_batch(batch_id: str):  # type: ignore[no-untyped-def]
    """Run the content-batch flow again for `batch_id`; finished work is not repeated."""
    from engine import local_server

    server = local_server.ensure_started()  # boots while the pipeline is imported
    from cli.local_run import OwnerMarker
    from flows.content_batch import content_batch
    from studio import progress_events
    from tasks.piece_progress import resumable_batch_request

    # not a UUID, unknown or already complete: BatchRequestError (exit 2) before any run
    batch_id = parse_batch_id("batch_id", batch_id) or ""
    config = resumable_batch_request(batch_id, None)
    from deployments.resume import resume_on_deployment

    submitted = resume_on_deployment(batch_id, config)  # a deployment's batch: resumed there
    if submitted is not None:
        return submitted
    owner = OwnerMarker()  # killed again: `batch status` says interrupted again
    progress_events.subscribe(owner)
    try:
        # the local API `batch run` uses, not Prefect's temporary server per command
        with local_server.api_of(server):
            from engine.run_logs import quiet_console

            quiet_console()  # the console of `batch run`: spec lines and warnings only
            return asyncio.run(content_batch(**resume_parameters(batch_id, config)))
    finally:
        progress_events.unsubscribe(owner)
        owner.release()


def batch_resume(
    batch_id: Annotated[str, typer.Argument(help="id of the batch to resume")],
) -> None:
    """Resume a batch that crashed or was killed: only unfinished pieces are worked on."""
    try:
        result = resume_batch(batch_id)
    except BatchRequestError as exc:
        refuse(exc)
    except Exception as exc:
        batch_failed(exc)
    if isinstance(result, tuple):  # a run of the batch's deployment, with its settings
        run_id, deployment, already = result
        if already:  # crash recovery (or another operator) resumed it first
            console.print(
                f"batch {batch_id} is already being resumed as run {run_id} of deployment"
                f" {deployment} (by {already}); nothing new started; follow it with"
                f" `studio batch status {run_id}`",
                soft_wrap=True,
            )
            return
        console.print(
            f"batch {batch_id} resumed as run {run_id} of deployment {deployment} (with the"
            f" original run's job variables); follow it with `studio batch status {run_id}`",
            soft_wrap=True,  # one line, ids unbroken
        )
        return
    if isinstance(result, str):  # another run finished it while this one waited its turn
        console.print(f"batch {batch_id}: {result}; nothing left to do", soft_wrap=True)
        return
    console.print(
        f"[bold]batch {result.batch_id}[/bold] resumed: {result.published}/{result.requested}"
        f" published, {result.rejected} rejected, {result.failed} failed,"
        f" {result.pending_review} pending review; cost ${result.cost_usd:.2f}",
        soft_wrap=True,
    )


def storage_sync(
    max_pieces: Annotated[int | None, typer.Option("--max-pieces")] = None,
) -> None:
    """Upload pieces kept locally during an R2 outage, then clear their sync mark."""
    from engine import local_server

    server = local_server.ensure_started()  # boots while the flow is imported
    from engine.run_logs import quiet_console
    from flows.storage_sync import storage_sync as flow

    # the local API `batch run` uses, not Prefect's temporary server per command
    with local_server.api_of(server):
        quiet_console()
        report = flow(max_pieces=max_pieces)
    console.print_json(json.dumps(report))
    if report["failed"]:
        raise typer.Exit(code=1)


def storage_privatize(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count, move nothing")] = False,
) -> None:
    """Move capa2/capa3 pieces stored by earlier versions out of the public content bucket
    into R2_PRIVATE_BUCKET_NAME, under names no public key gives away (run once after
    upgrading)."""
    from dataclasses import asdict

    from studio.db.engine import session_scope
    from studio.settings import get_settings
    from studio.storage.base import key_secret
    from studio.storage.privatize import privatize_premium
    from studio.storage.registry import build_remote_store, storage_settings

    settings = get_settings()
    storage = storage_settings(settings)
    problem = storage.misconfiguration()
    if problem:
        refuse(BatchRequestError("R2_PRIVATE_BUCKET_NAME", problem))
    remote = build_remote_store(settings)
    if remote is None:  # the local store has no public bucket: nothing is exposed
        console.print("R2 is not configured (local store): no premium piece to move")
        return
    report = privatize_premium(
        session_scope, remote, storage.r2_bucket_name, key_secret(storage), dry_run=dry_run
    )
    console.print_json(json.dumps(asdict(report)))
    if report.errors:
        raise typer.Exit(code=1)


def seed_history(
    pieces: Annotated[int, typer.Option("--pieces", min=1, help="how many pieces")] = 10_000,
    avatars: Annotated[int, typer.Option("--avatars", min=1)] = 200,
    days: Annotated[int, typer.Option("--days", min=1, help="history span")] = 730,
    seed: Annotated[int, typer.Option("--seed")] = 1,
    into_non_empty: Annotated[
        bool,
        typer.Option(
            "--into-non-empty", help="add the history even though real avatars are registered"
        ),
    ] = False,
) -> None:
    """Fill the database with N realistic historical pieces (for benchmarks). Its
    avatars are inactive; a database holding real avatars is refused unless
    --into-non-empty."""
    from studio.db.engine import get_engine
    from studio.db.migrate import upgrade_to_head
    from studio.db.seed import seed_history as seed_rows
    from studio.settings import get_settings

    engine = get_engine(get_settings())
    upgrade_to_head(engine)
    real = real_avatars(engine)
    if real and not into_non_empty:
        refuse(
            BatchRequestError(
                "database",
                f"it holds {len(real)} real avatar(s) (e.g. {real[0]!r}); seed-history is for a"
                " benchmark database: point DATABASE_URL at another one, or add"
                " --into-non-empty",
            )
        )
    summary = seed_rows(engine, pieces, avatars, days, seed)
    console.print(
        f"seeded {summary.pieces} pieces in {summary.batches} batches across"
        f" {len(summary.avatars)} inactive avatars (most active: {summary.flagship})",
        highlight=False,
    )


def real_avatars(engine) -> list[str]:  # type: ignore[no-untyped-def]
    """Names of the avatars an operator registered (not seeded ones)."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from studio.db.models import Avatar
    from studio.db.seed import is_seeded_avatar

    with Session(engine) as session:
        rows = session.execute(select(Avatar.name, Avatar.lora_weights_url)).all()
    return [name for name, url in rows if not is_seeded_avatar(name, url)]


def register(app: typer.Typer, batch_app: typer.Typer) -> None:
    """Add these commands to the main CLI: `batch resume`, `storage-sync`,
    `storage-privatize`, `seed-history`, `pieces`."""
    batch_app.command("resume")(batch_resume)
    app.command("pieces")(pieces)  # cli/pieces.py
    app.command("storage-sync")(storage_sync)
    app.command("storage-privatize")(storage_privatize)
    app.command("seed-history")(seed_history)
