"""`studio local-server status|stop`: the reusable local Prefect API of the embedded defaults."""

from __future__ import annotations

import typer

from cli.output import console
from engine import local_server

local_server_app = typer.Typer(
    help="The local Prefect API that `studio batch run` starts and reuses (no PREFECT_API_URL).",
    no_args_is_help=True,
)


@local_server_app.command("status")
def status() -> None:
    """Say whether the local server runs, where, and with which process id."""
    server = local_server.read_state()
    if server is None or not server.alive():
        console.print("no local Prefect server is running")
        raise typer.Exit(1)
    health = "healthy" if server.healthy() else "starting or not answering"
    console.print(f"local Prefect server at {server.url} (pid {server.pid}): {health}")


@local_server_app.command("stop")
def stop() -> None:
    """Stop the local server now (it also stops on its own once idle)."""
    server = local_server.stop()
    if server is None:
        console.print("no local Prefect server was running")
        return
    console.print(f"stopped the local Prefect server (pid {server.pid})")
