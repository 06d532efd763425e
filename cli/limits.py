"""`studio limits`: the per-provider Prefect global concurrency limits.

`studio limits apply` creates or resizes one limit per image provider from the
*_MAX_CONCURRENT settings, so the caps hold across every process that runs batches;
`studio limits show` prints their sizes and the slots in use. Both talk to the
operator's server (PREFECT_API_URL, else 127.0.0.1:4200) with its credential
(PREFECT_API_AUTH_STRING); no server or a refused credential: one line naming the
URL, exit 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer
from rich.table import Table

from cli.output import console, err

limits_app = typer.Typer(help="Per-provider global concurrency limits.", no_args_is_help=True)
T = TypeVar("T")


def _on_server(work: Callable[..., Awaitable[T]]) -> T:
    """Run `work(client)` on the operator's server; exit 1 in one line if it cannot."""
    from deployments.api import CredentialRefused, ServerUnreachable, server_client

    async def run() -> T:
        async with server_client() as client:
            return await work(client=client)

    try:
        return asyncio.run(run())
    except (ServerUnreachable, CredentialRefused) as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None


@limits_app.command("apply")
def apply() -> None:
    """Create or update `provider:<name>` limits to the configured MAX_CONCURRENT."""
    from deployments.concurrency_limits import apply_provider_limits

    for name, what in _on_server(apply_provider_limits).items():
        console.print(f"{name}: {what}")


@limits_app.command("show")
def show() -> None:
    """Print each provider limit's size and the slots in use now."""
    from deployments.concurrency_limits import read_provider_limits

    table = Table("limit", "size", "in use", "active")
    for name, info in _on_server(read_provider_limits).items():
        if not info["exists"]:
            table.add_row(name, "missing (run `studio limits apply`)", "-", "-")
        else:
            table.add_row(
                name, str(info["limit"]), str(info["active_slots"]), str(info["active"])
            )
    console.print(table)
