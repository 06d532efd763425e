"""`studio automations apply`: the spec's alerts as Prefect automations, by name.

Run it once per server and again after an upgrade: each automation is created or
updated in place, never duplicated (see deployments/automations.py). Exit 1 with one
line naming the URL when no Prefect server answers there, or naming
PREFECT_API_AUTH_STRING when the server refuses the credential.
"""

from __future__ import annotations

import asyncio
from typing import Annotated
from uuid import UUID

import typer

from studio.cli_output import console, err

automations_app = typer.Typer(
    help="The spec's alerts as Prefect automations.", no_args_is_help=True
)


@automations_app.callback()
def _group() -> None:
    """Keeps `apply` a sub-command even while it is the only one."""


@automations_app.command("apply")
def apply(
    notify_block: Annotated[
        UUID | None,
        typer.Option(
            "--notify-block",
            help="id of a notification block (Slack, email, ...) every alert sends to; "
            "without it the block the automations already use is kept",
        ),
    ] = None,
) -> None:
    """Create or update every studio automation by name (never a duplicate)."""
    from deployments.api import CredentialRefused, ServerUnreachable, api_url, server_client
    from deployments.automations import apply_automations

    async def run() -> dict[str, str]:
        async with server_client() as client:
            return await apply_automations(client, notify_block)

    try:
        outcome = asyncio.run(run())
    except (ServerUnreachable, CredentialRefused) as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    for name, what in outcome.items():
        console.print(f"{name}: {what}")
    console.print(f"{len(outcome)} automations on {api_url()}")
