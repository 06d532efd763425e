"""`studio limits`: the per-provider Prefect global concurrency limits.

`studio limits apply` creates or resizes one limit per image provider from the
*_MAX_CONCURRENT settings, so the caps hold across every process that runs batches;
`studio limits show` prints their sizes and the slots in use.
"""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console
from rich.table import Table

limits_app = typer.Typer(help="Per-provider global concurrency limits.", no_args_is_help=True)
console = Console()


@limits_app.command("apply")
def apply() -> None:
    """Create or update `provider:<name>` limits to the configured MAX_CONCURRENT."""
    from deployments.concurrency_limits import apply_provider_limits

    for name, what in asyncio.run(apply_provider_limits()).items():
        console.print(f"{name}: {what}")


@limits_app.command("show")
def show() -> None:
    """Print each provider limit's size and the slots in use now."""
    from deployments.concurrency_limits import read_provider_limits

    table = Table("limit", "size", "in use", "active")
    for name, info in asyncio.run(read_provider_limits()).items():
        if not info["exists"]:
            table.add_row(name, "missing (run `studio limits apply`)", "-", "-")
        else:
            table.add_row(
                name, str(info["limit"]), str(info["active_slots"]), str(info["active"])
            )
    console.print(table)
