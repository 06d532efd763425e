"""`studio server`: a Prefect server started with the settings the pipeline's promises need.

WHY: `prefect server start` as it comes keeps concurrency leases in its own memory
while it counts their slots in its database. Killed and restarted, it knows no lease:
slots of calls that end are never given back and `provider:<name>` stays full for good
(issue 10). This command starts the same server with:

- `PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect.server.concurrency.lease_storage.filesystem`
  (leases in files under PREFECT_HOME, which survive a restart). Several server replicas
  need one storage for all of them: install `prefect-redis`, run a Redis, and set
  `PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect_redis.lease_storage` with
  `PREFECT_REDIS_MESSAGING_HOST`/`_PORT` (or `PREFECT_REDIS_MESSAGING_URL`); a value
  already in the environment is kept.
- `PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS=5`: an expired lease (a dead
  process's; leases last 60 s and are renewed while held) is freed within 65 s
  instead of 75 s.
- beside it, when `DATABASE_URL` names the pipeline's shared database, the slot
  reconcile every 15 s (tasks/slot_reconcile.py): slots the server counts beyond the
  lease census are freed, so even a leak Prefect cannot see heals within a minute.

Explicit environment values always win; other arguments pass through to Prefect.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import Annotated

import typer

from studio.cli_output import console
from studio.local_server import EVENT_BATCHING

FILESYSTEM_LEASES = "prefect.server.concurrency.lease_storage.filesystem"
SERVER_DEFAULTS = {
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": FILESYSTEM_LEASES,
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "5",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    **EVENT_BATCHING,  # written in bursts, not one task run per transaction
}
RECONCILE_SECONDS = 15.0


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment `prefect server start` runs with: the defaults above, unless set."""
    env = dict(os.environ if base is None else base)
    for key, value in SERVER_DEFAULTS.items():
        env.setdefault(key, value)
    return env


def _reconcile_in_background(api_url: str) -> None:
    """Run the slot reconcile loop in a daemon thread against the server just started."""
    import asyncio

    def run() -> None:
        os.environ["PREFECT_API_URL"] = api_url
        from studio.providers.lease_census import LeaseCensus
        from tasks.slot_reconcile import reconcile_forever

        asyncio.run(reconcile_forever(LeaseCensus(), every=RECONCILE_SECONDS))

    threading.Thread(target=run, name="slot-reconcile", daemon=True).start()


def server(
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="port to listen on")] = 4200,
    reconcile: Annotated[
        bool, typer.Option("--reconcile/--no-reconcile",
                           help="run the slot reconcile beside the server "
                                "(default: when DATABASE_URL is set)")
    ] = bool(os.environ.get("DATABASE_URL")),
) -> None:
    """Start `prefect server start` with durable concurrency leases (and the slot reconcile)."""
    env = server_environment()
    storage = env["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"]
    if storage.endswith(".memory"):
        console.print(
            "[yellow]lease storage is in memory: a restart leaks provider slots until "
            "the slot reconcile frees them[/yellow]"
        )
    console.print(f"lease storage: {storage}")
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", host,
               "--port", str(port)]
    child = subprocess.Popen(command, env=env)
    if reconcile:
        shown = "localhost" if host in ("0.0.0.0", "::") else host
        _reconcile_in_background(f"http://{shown}:{port}/api")
        console.print(f"slot reconcile every {RECONCILE_SECONDS:.0f} s against the studio "
                      "database (DATABASE_URL)")

    def forward(signum: int, _frame: object) -> None:
        child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    raise typer.Exit(code=child.wait())


def register(app: typer.Typer) -> None:
    app.command("server")(server)
