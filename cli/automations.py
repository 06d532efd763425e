"""`studio automations apply`: the spec's alerts as Prefect automations, by name.

Run it once per server, again after each `prefect deploy` and after an upgrade: each
automation is created or updated in place, never duplicated (see
deployments/automations.py), and the project's deployments are made to refuse unknown
parameters at run creation (engine/strict_parameters.py; `prefect deploy` undoes
that, so apply again after it). Exit 1 with one line naming the URL when no Prefect
server answers there, or naming PREFECT_API_AUTH_STRING when the server refuses the
credential; exit 2 with one line when `--notify-block` names no block on the server.
Without any notification block it still applies, and warns in one line that the
automations notify nobody.
"""

from __future__ import annotations

import asyncio
from typing import Annotated
from uuid import UUID

import typer

from cli.output import console, err

automations_app = typer.Typer(
    help="The spec's alerts as Prefect automations.", no_args_is_help=True
)


class BlockMissing(Exception):
    """`--notify-block` names no block document on the server (nothing is applied)."""


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
    """Create or update every studio automation by name (never a duplicate), and make
    the deployments refuse unknown parameters."""
    from deployments.api import CredentialRefused, ServerUnreachable, api_url, server_client
    from deployments.automations import apply_automations, block_exists, notified_block
    from engine.strict_parameters import apply_strict_parameters

    async def run() -> tuple[dict[str, str], dict[str, str], bool]:
        async with server_client() as client:
            if notify_block is not None and not await block_exists(client, notify_block):
                raise BlockMissing
            outcome = await apply_automations(client, notify_block)
            strict = await apply_strict_parameters(client)
            return outcome, strict, await notified_block(client) is not None

    try:
        outcome, strict, notifies = asyncio.run(run())
    except (ServerUnreachable, CredentialRefused) as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    except BlockMissing:
        err.print(
            f"[red]error[/red] --notify-block {notify_block}: no such block document on "
            f"{api_url()}; `prefect block ls` lists them (nothing was changed)",
            highlight=False, soft_wrap=True,
        )
        raise typer.Exit(code=2) from None
    for name, what in outcome.items():
        console.print(f"{name}: {what}", highlight=False, soft_wrap=True)
    for name, what in strict.items():
        console.print(f"{name}: unknown parameters refused ({what})", highlight=False)
    console.print(f"{len(outcome)} automations on {api_url()}")
    if not notifies:
        err.print(
            "[yellow]warning[/yellow] the automations notify nobody: save a notification "
            "block (e.g. `prefect block create slack-webhook`) and run `studio automations "
            "apply --notify-block <block-document-id>`",
            highlight=False, soft_wrap=True,
        )


if __name__ == "__main__":  # pragma: no cover - `python -m cli.automations`, the same command
    import sys

    automations_app(["apply", *sys.argv[1:]], prog_name="python -m cli.automations")
