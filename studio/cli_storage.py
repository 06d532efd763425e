"""CLI commands for persistence: resume a crashed batch, sync local files, seed history.

Registered on the main `studio` app by `register(app, batch_app)` (see studio/cli.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.console import Console

console = Console()
err = Console(stderr=True)


def resume_batch(batch_id: str):  # type: ignore[no-untyped-def]
    """Run the content-batch flow again for `batch_id`; finished work is not repeated."""
    from flows.content_batch import content_batch
    from tasks.progress import stored_batch_request

    config = stored_batch_request(batch_id)  # unknown id: BatchRequestError before any run
    return asyncio.run(
        content_batch(
            avatar_id=config["avatar_id"],
            num_pieces=config["num_pieces"],
            resume_batch_id=batch_id,
        )
    )


def batch_resume(
    batch_id: Annotated[str, typer.Argument(help="id of the batch to resume")],
) -> None:
    """Resume a batch that crashed or was killed: only unfinished pieces are worked on."""
    from studio.request import BatchRequestError

    try:
        result = resume_batch(batch_id)
    except BatchRequestError as exc:
        err.print(f"[red]error[/red] {exc.field}: {exc.message}")
        raise typer.Exit(code=2) from None
    except Exception as exc:
        err.print(f"[red]batch failed[/red]: {type(exc).__name__}: {exc}")
        raise typer.Exit(code=1) from None
    console.print(
        f"[bold]batch {result.batch_id}[/bold] resumed: {result.published}/{result.requested}"
        f" published, {result.rejected} rejected, {result.failed} failed,"
        f" {result.pending_review} pending review; cost ${result.cost_usd:.2f}"
    )


def storage_sync(
    max_pieces: Annotated[int | None, typer.Option("--max-pieces")] = None,
) -> None:
    """Upload pieces kept locally during an R2 outage, then clear their sync mark."""
    from flows.storage_sync import storage_sync as flow

    report = flow(max_pieces=max_pieces)
    console.print_json(json.dumps(report))
    if report["failed"]:
        raise typer.Exit(code=1)


def seed_history(
    pieces: Annotated[int, typer.Option("--pieces", min=1, help="how many pieces")] = 10_000,
    avatars: Annotated[int, typer.Option("--avatars", min=1)] = 200,
    days: Annotated[int, typer.Option("--days", min=1, help="history span")] = 730,
    seed: Annotated[int, typer.Option("--seed")] = 1,
) -> None:
    """Fill the database with N realistic historical pieces (for benchmarks)."""
    from studio.db.engine import get_engine
    from studio.db.migrate import upgrade_to_head
    from studio.db.seed import seed_history as seed_rows
    from studio.settings import get_settings

    engine = get_engine(get_settings())
    upgrade_to_head(engine)
    summary = seed_rows(engine, pieces, avatars, days, seed)
    console.print(
        f"seeded {summary.pieces} pieces in {summary.batches} batches across"
        f" {len(summary.avatars)} avatars (most active: {summary.flagship})"
    )


def register(app: typer.Typer, batch_app: typer.Typer) -> None:
    """Add these commands to the main CLI: `batch resume`, `storage-sync`, `seed-history`."""
    batch_app.command("resume")(batch_resume)
    app.command("storage-sync")(storage_sync)
    app.command("seed-history")(seed_history)
