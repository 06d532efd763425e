"""`studio server`: a Prefect server started with the settings the pipeline's promises need.

WHY: `prefect server start` as it comes keeps concurrency leases in its own memory
while it counts their slots in its database. Killed and restarted, it knows no lease:
slots of calls that end are never given back and `provider:<name>` stays full for good
(issue 10). This command starts the same server with:

- `PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=engine.lease_storage` (Prefect's filesystem
  storage: leases in files under PREFECT_HOME, which survive a restart; its index writers
  of one server queued in memory instead of polling a file lock). Several server replicas
  need one storage for all of them: install `prefect-redis`, run a Redis, and set
  `PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect_redis.lease_storage` with
  `PREFECT_REDIS_MESSAGING_HOST`/`_PORT` (or `PREFECT_REDIS_MESSAGING_URL`); a value
  already in the environment is kept.
- `PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS=5`: an expired lease (a dead
  process's; leases last 60 s and are renewed while held) is freed within 65 s
  instead of 75 s.
- `PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS=1`: a refused
  global-concurrency waiter is told to retry within about a second, not up to 30 s
  (engine/local_server.py, SLOT_WAIT_SECONDS, says why 1).
- beside it, only when the lease storage is one that loses leases on a restart (an
  operator's `...lease_storage.memory`) and `DATABASE_URL` names the pipeline's shared
  database, the slot reconcile every 15 s (engine/slot_reconcile.py): slots the server
  counts beyond the lease census are freed, so a leak heals within a minute. Filesystem
  and Redis storage keep leases and Prefect's repossessor frees a dead holder's slots:
  no reconcile runs (and pipeline processes write no census: engine/lease_census.py).

The command then *becomes* the server (`os.execve` into `prefect server start`, same
pid) and runs the reconcile, when it runs, as a child that the kernel ends with it
(engine/server_process.py, PR_SET_PDEATHSIG): killed even with -9, nothing keeps
serving the port without the reconcile, and a restart binds (issue 16).

And it is authenticated by default (issue 15: anyone who reached the API ran batches
and read the blocks' keys), with Prefect's own settings:

- `PREFECT_SERVER_API_AUTH_STRING`: every API request needs it (HTTP basic; the UI asks
  for it, clients and workers send `PREFECT_API_AUTH_STRING`). Taken from the
  environment, else from `$PREFECT_HOME/studio-api-auth-string` (mode 0600), generated
  there at the first start. The command prints how clients read it, never the value.
- `PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED=true` (Prefect's clients and UI fetch
  the token themselves) and `PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS` = the UI's own
  origin (PREFECT_UI_URL, else http://<host>:<port>), instead of Prefect's `*`.
- `--no-auth` runs without a credential, on a loopback address only; a non-loopback
  `--host` without one is refused unless `--insecure` is given as well.

Explicit environment values always win; other arguments pass through to Prefect.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import stat
import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from cli.output import console, err
from engine.lease_census import DURABLE_LEASE_STORAGES
from engine.local_server import SERVER_SETTINGS, prefect_home
from engine.server_process import start_reconcile

RECONCILE_SECONDS = 15.0
SERVER_AUTH = "PREFECT_SERVER_API_AUTH_STRING"
CLIENT_AUTH = "PREFECT_API_AUTH_STRING"
#: where the generated auth string is kept, under PREFECT_HOME (mode 0600)
AUTH_FILE = "studio-api-auth-string"


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment `prefect server start` runs with: the project's server settings
    (engine/local_server.py, SERVER_SETTINGS), each unless set."""
    env = dict(os.environ if base is None else base)
    for key, value in SERVER_SETTINGS.items():
        env.setdefault(key, value)
    return env


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def auth_file() -> Path:
    return prefect_home() / AUTH_FILE


def stored_auth_string(path: Path | None = None) -> str:
    """The auth string kept in `path` (default: auth_file()), generated on first use.

    Created with O_EXCL at mode 0600 (two starts at once cannot write two strings);
    a file others can read is narrowed to 0600, saying so."""
    path = path or auth_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            path.chmod(0o600)
            err.print(f"[yellow]{path} was readable by others (mode {mode:o}): now 600; "
                      "consider a new auth string[/yellow]")
        value = path.read_text().strip()
        if value:
            return value
        raise typer.BadParameter(f"{path} is empty: delete it to generate a new one") from None
    with os.fdopen(fd, "w") as out:
        value = f"studio:{secrets.token_urlsafe(32)}"
        out.write(value + "\n")
    console.print(f"generated a new API auth string in {path} (mode 600)", soft_wrap=True)
    return value


def ui_origin(host: str, port: int, env: dict[str, str]) -> str:
    """The origin the UI is served from: PREFECT_UI_URL's, else http://<host>:<port>."""
    configured = env.get("PREFECT_UI_URL")
    if configured:
        parts = urlsplit(configured)
        return f"{parts.scheme}://{parts.netloc}"
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}"


def secure_environment(
    env: dict[str, str], host: str, port: int, *, no_auth: bool, insecure: bool
) -> tuple[dict[str, str], str | None, str]:
    """`env` with the server's credential, CSRF and CORS settings; the auth string (None:
    none) and how a client obtains it (a shell expression, never the value).

    Refuses (typer.BadParameter, exit 2) a non-loopback host with no credential unless
    `insecure`."""
    env = dict(env)
    auth: str | None
    if no_auth or env.get(SERVER_AUTH) == "":
        auth, how = None, ""
    elif env.get(SERVER_AUTH):
        auth, how = env[SERVER_AUTH], f'"${SERVER_AUTH}"'
    else:
        path = auth_file()
        auth, how = stored_auth_string(path), f'"$(cat {path})"'
    if auth is None:
        env.pop(SERVER_AUTH, None)
        if not is_loopback(host) and not insecure:
            raise typer.BadParameter(
                f"--host {host} is reachable from other machines: refusing to serve it "
                f"without a credential (drop --no-auth / set {SERVER_AUTH}, or add "
                "--insecure to do it anyway)",
                param_hint="--host",
            )
    else:
        env[SERVER_AUTH] = auth
        env[CLIENT_AUTH] = auth  # the server's own clients (services) call its API too
    # an operator's value wins, under either of Prefect's names for the setting
    if "PREFECT_SERVER_CSRF_PROTECTION_ENABLED" not in env:
        env.setdefault("PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED", "true")
    if "PREFECT_SERVER_CORS_ALLOWED_ORIGINS" not in env:
        env.setdefault("PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS", ui_origin(host, port, env))
    return env, auth, how


def reconcile_seconds() -> float:
    try:
        return float(os.environ.get("STUDIO_SLOT_RECONCILE_SECONDS", RECONCILE_SECONDS))
    except ValueError:
        return RECONCILE_SECONDS


def _print_connection(api_url: str, ui: str, how: str) -> None:
    """How clients, workers and the UI connect (the credential's source, not its value)."""
    console.print(f"Prefect API: {api_url}   UI: {ui}", highlight=False)
    if not how:
        console.print("[red bold]NO AUTHENTICATION: anyone who reaches this address can "
                      "run batches and read every block's secrets[/red bold]")
        console.print(f"clients and workers: export PREFECT_API_URL={api_url}",
                      highlight=False, soft_wrap=True)
        return
    console.print("clients and workers (the UI asks for the same auth string):",
                  highlight=False)
    console.print(f"  export PREFECT_API_URL={api_url}", highlight=False, soft_wrap=True)
    console.print(f"  export {CLIENT_AUTH}={how}", highlight=False, soft_wrap=True)


def server(
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="port to listen on")] = 4200,
    reconcile: Annotated[
        bool, typer.Option("--reconcile/--no-reconcile",
                           help="run the slot reconcile beside a server whose "
                                "lease storage loses leases on a restart "
                                "(default: when DATABASE_URL is set)")
    ] = bool(os.environ.get("DATABASE_URL")),
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="serve without a credential (loopback only)")
    ] = False,
    insecure: Annotated[
        bool, typer.Option("--insecure",
                           help="allow --no-auth on an address other machines reach")
    ] = False,
) -> None:
    """Start `prefect server start` with a credential, durable concurrency leases (or, on
    a lease storage that loses them, the slot reconcile)."""
    env, auth, how = secure_environment(
        server_environment(), host, port, no_auth=no_auth, insecure=insecure
    )
    storage = env["PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"]
    durable = storage in DURABLE_LEASE_STORAGES
    if not durable:
        console.print(
            f"[yellow]lease storage {storage} loses leases on a restart: provider slots "
            "leak until the slot reconcile frees them[/yellow]"
        )
    console.print(f"lease storage: {storage}")
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", host,
               "--port", str(port)]
    origin = ui_origin(host, port, {})
    seen = f"http://{socket.gethostname()}:{port}" if host in ("0.0.0.0", "::") else origin
    _print_connection(f"{seen}/api", env.get("PREFECT_UI_URL", seen), how)
    if auth and not is_loopback(host):
        console.print("[yellow]plain HTTP: the auth string crosses the network in clear; "
                      "put TLS in front (a reverse proxy) for other machines[/yellow]")
    if reconcile and not durable:
        every = reconcile_seconds()
        start_reconcile(f"{origin}/api", auth, every, env)  # dies with the server
        console.print(f"slot reconcile every {every:g} s against the studio "
                      "database (DATABASE_URL)")
    elif reconcile:
        console.print("no slot reconcile: this lease storage keeps leases through a "
                      "restart and Prefect frees a dead holder's slots")
    sys.stdout.flush()
    sys.stderr.flush()
    # this process becomes Prefect's server (same pid): killed, even with -9, nothing of
    # it keeps serving, and the reconcile child gets SIGTERM from the kernel
    os.execve(sys.executable, command, env)  # noqa: S606 - this interpreter, fixed args


def register(app: typer.Typer) -> None:
    app.command("server")(server)
