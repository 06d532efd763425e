"""The local Prefect API of the embedded defaults: started once, reused by later commands.

WHY: with no `PREFECT_API_URL`, Prefect starts a temporary server for every command and
stops it at exit. Its start-up is ~5 s of imports and app building (measured with
`bench/bench_overhead.py`), paid before a 5-piece batch of ~1 s can begin, and on every
command. Here the first `studio batch run` / `studio demo` starts the very same server
(Prefect's own app, `prefect.server.api.server:create_app`, in Prefect's ephemeral mode:
no UI, only the services a local run uses) as a detached process, at the start of the
command so it boots while the command imports the pipeline; later commands find it and
skip the start-up. It exits on its own after `STUDIO_LOCAL_SERVER_IDLE_SECONDS` (600)
without a request or an open connection, so nothing lingers for long.

Leases live in files under PREFECT_HOME (as with `studio server`), and Prefect's own
lease repossessor runs in it: ephemeral mode starts only the services marked to run in
ephemeral servers, which the repossessor is not (prefect/server/services/repossessor.py),
so without it an expired lease was never freed. Here it is registered to run in ephemeral
mode as well (`reap_expired_leases`): a batch killed -9 while holding provider slots gets
them back within the lease (60 s) plus the repossessor's loop (5 s), and the server needs
no lease census or reconcile (engine/lease_census.py reads its settings and records
nothing).

`STUDIO_LOCAL_SERVER=off` restores Prefect's own temporary server per command. An API
URL set in the environment or the Prefect profile always wins: nothing is started then.

It listens on 127.0.0.1 only and still asks for a credential (issue 15): a random auth
string per start, which only the commands of this user read (the state file is 0600).
Commands pointed at it send that string whatever PREFECT_API_AUTH_STRING /
PREFECT_SERVER_API_AUTH_STRING the environment holds for another server, so such
variables neither lock the local server's own commands out nor reach it.

The state file `$PREFECT_HOME/studio-local-server.json` ({"pid", "url", "auth"}, mode
0600) is what `studio local-server status|stop` and `bench/bench_overhead.py` read.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATE_FILE = "studio-local-server.json"
LOG_FILE = "studio-local-server.log"
DEFAULT_IDLE_SECONDS = 600.0
STARTUP_TIMEOUT_SECONDS = 60.0

#: Prefect's own batching of the events a batch sends (every Prefect server this project
#: starts uses it: this one, `studio server`): task-run events are written one task run
#: per transaction by default (batch size 1) and events 20 at a time; a batch's task runs
#: and state events arrive in bursts, so they are written 100 at a time, at most 1 s
#: (task runs) / 2 s (events) after they arrive. Measured with bench/bench_overhead.py:
#: the local server's CPU for a 500-piece batch fell from ~13 s to ~10 s.
EVENT_BATCHING = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "2",
}

#: how long, at most, the server tells a refused global-concurrency waiter to sleep
#: (Prefect 3.9's bound on the 423's Retry-After; its default, 30 s, left a freed slot
#: idle that long: PrefectHQ/prefect#23183). 1 s: a provider call lasts seconds, so a
#: waiter of Prefect's own `concurrency()` retries within about a call's length of the
#: slot's release (the jitter adds up to 30 %), at the cost of one refused request per
#: waiter per second; it also makes a limit's denied-slot count decay at least one slot
#: a second.
SLOT_WAIT_SECONDS = "1"

#: the settings every Prefect server this project starts runs with (this one, `studio
#: server`), each unless the environment sets it: leases in files that outlive a restart,
#: expired leases reaped every 5 s (Prefect's default is 15 s), the slot-wait bound,
#: event batching, no analytics
SERVER_SETTINGS = {
    # Prefect's filesystem storage, its index writers queued in memory (engine/lease_storage.py)
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "engine.lease_storage",
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "5",
    "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": SLOT_WAIT_SECONDS,
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    **EVENT_BATCHING,
}

#: what Prefect's own temporary server runs with (prefect/server/api/server.py,
#: SubprocessASGIServer._run_uvicorn_command), plus the project's server settings
SERVER_ENV = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
    **SERVER_SETTINGS,
}


def prefect_home() -> Path:
    """PREFECT_HOME as Prefect resolves it by default, without importing Prefect (the
    point is to start the server before the command pays Prefect's imports)."""
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


def wanted() -> bool:
    """Whether this command should use (and if needed start) the local server.

    Not when an API URL is configured: in the environment, or in Prefect's profiles
    file (read as text, cheaply; a profile that names an API URL is left to Prefect)."""
    if os.environ.get("STUDIO_LOCAL_SERVER", "on").lower() in ("off", "0", "false", "no"):
        return False
    if os.environ.get("PREFECT_API_URL"):
        return False
    if "prefect.settings" in sys.modules:  # loaded already: its settings are the truth
        from prefect.settings import get_current_settings

        return not get_current_settings().api.url
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or prefect_home() / "profiles.toml")
    with contextlib.suppress(OSError):
        if "PREFECT_API_URL" in profiles.expanduser().read_text():
            return False
    return True


@dataclass
class LocalServer:
    pid: int
    url: str  # the API URL, ending in /api
    auth: str | None = None  # its auth string (None: a server started without one)

    def healthy(self, timeout: float = 0.5) -> bool:
        try:
            health = f"{self.url}/health"  # http://127.0.0.1:<port>/api, written by us
            with urllib.request.urlopen(health, timeout=timeout) as answer:  # noqa: S310
                return answer.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_SECONDS) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return True
            if not self.alive():
                return False
            time.sleep(0.05)
        return False


def _state_path() -> Path:
    return prefect_home() / STATE_FILE


def read_state() -> LocalServer | None:
    try:
        data: dict[str, Any] = json.loads(_state_path().read_text())
        auth = data.get("auth")
        return LocalServer(pid=int(data["pid"]), url=str(data["url"]),
                           auth=str(auth) if auth else None)
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One command at a time decides whether to start the server (no two servers)."""
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "studio-local-server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_state(server: LocalServer) -> None:
    """The state file, readable by this user only (it holds the server's auth string)."""
    path = _state_path()
    temporary = path.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"pid": server.pid, "url": server.url, "auth": server.auth}, out)
    os.replace(temporary, path)


def server_env(auth: str) -> dict[str, str]:
    """The local server's environment: this one, SERVER_ENV's defaults, and its own
    credential in place of any the environment holds (see the module's docstring)."""
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in SERVER_ENV.items()}}
    env["PREFECT_HOME"] = str(prefect_home())
    env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    env["PREFECT_API_AUTH_STRING"] = auth  # the server's own services call it too
    # no browser ever talks to it: CSRF tokens would cost every writing request a lookup
    env["PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED"] = "false"
    return env


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def idle_seconds() -> float:
    try:
        return float(os.environ.get("STUDIO_LOCAL_SERVER_IDLE_SECONDS", DEFAULT_IDLE_SECONDS))
    except ValueError:
        return DEFAULT_IDLE_SECONDS


def ensure_started() -> LocalServer | None:
    """The running local server, or one just started (not waited for); None if unwanted.

    Returns at once: the caller waits with `wait_ready` when it needs the API, so the
    server boots while the command does its own start-up."""
    if not wanted():
        return None
    with _locked():
        running = read_state()
        if running is not None and running.alive():
            return running
        port = _free_port()
        home = prefect_home()
        auth = f"studio:{secrets.token_urlsafe(32)}"
        env = server_env(auth)
        with open(home / LOG_FILE, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "engine.local_server", str(port), str(idle_seconds())],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # not the command's child: it outlives the command
            )
        server = LocalServer(pid=process.pid, url=f"http://127.0.0.1:{port}/api", auth=auth)
        _write_state(server)
        return server


def stop() -> LocalServer | None:
    """Stop the local server if one runs (SIGTERM, then wait); the one stopped or None."""
    with _locked():
        server = read_state()
        if server is None:
            return None
        if server.alive():
            os.kill(server.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while server.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            _state_path().unlink()
        return server


#: Prefect's SQLite transactions are DEFERRED, so two that write at once fail at once with
#: "database is locked", which the server answers 503 ("retryable"); Prefect's client
#: then sleeps 2, 4, 8 s... unless the answer says how long to wait (client/base.py honours
#: Retry-After). The lock is gone within milliseconds, so the local server says so: two
#: chunk subflows registering together cost ~2 s each without this (issue 11's note).
RETRY_AFTER = (b"retry-after", b"0.1")


class IdleWatch:
    """ASGI wrapper: counts open requests/connections and when the last one ended, and
    puts a short Retry-After on the server's 503s (see RETRY_AFTER)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.open = 0
        self.last = time.monotonic()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        self.open += 1

        async def send_with_retry_after(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                message = {**message, "headers": [*message.get("headers", []), RETRY_AFTER]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_retry_after)
        finally:
            self.open -= 1
            self.last = time.monotonic()

    def idle_for(self) -> float:
        return 0.0 if self.open else time.monotonic() - self.last


def reap_expired_leases() -> None:
    """Run Prefect's lease repossessor in this ephemeral server too: its own service
    function, registered with Prefect's own decorator to run in ephemeral mode, enabled
    and timed by its own settings (PREFECT_SERVER_SERVICES_REPOSSESSOR_ENABLED /
    _LOOP_SECONDS). Before the app is created: its lifespan schedules the services."""
    from prefect.server.services.perpetual_services import perpetual_service
    from prefect.server.services.repossessor import monitor_expired_leases
    from prefect.settings import get_current_settings

    perpetual_service(
        enabled_getter=lambda: get_current_settings().server.services.repossessor.enabled,
        run_in_ephemeral=True,
    )(monitor_expired_leases)


def serve(port: int, idle: float) -> None:
    """Run Prefect's API app on `port` until idle for `idle` seconds or SIGTERM."""
    import uvicorn
    from prefect.server.api.server import create_app

    reap_expired_leases()
    watch = IdleWatch(create_app(ephemeral=True, final=True))
    server = uvicorn.Server(
        uvicorn.Config(watch, host="127.0.0.1", port=port, log_level="error", lifespan="on")
    )

    def stop_when_idle() -> None:
        while not server.started and not server.should_exit:  # booting is not idling
            time.sleep(0.05)
        watch.last = time.monotonic()
        while not server.should_exit:
            time.sleep(min(5.0, max(idle / 4, 0.2)))
            if watch.idle_for() >= idle:
                server.should_exit = True

    threading.Thread(target=stop_when_idle, daemon=True).start()
    try:
        server.run()
    finally:
        state = read_state()
        if state is not None and state.pid == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                _state_path().unlink()


if __name__ == "__main__":
    serve(int(sys.argv[1]), float(sys.argv[2]))


@contextlib.contextmanager
def api_of(server: LocalServer | None) -> Iterator[str | None]:
    """Prefect pointed at `server` for the block; the URL, or None when Prefect's own
    temporary server is used instead (no server wanted, or it failed to start: said
    on stderr, with where its log is)."""
    if server is None:
        yield None
        return
    if not server.wait_ready():
        print(
            f"local Prefect server did not start (see {prefect_home() / LOG_FILE}); "
            "using a temporary one for this command",
            file=sys.stderr,
        )
        yield None
        return
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    updates: dict[Any, Any] = {PREFECT_API_URL: server.url}
    if server.auth:  # its own credential, even over one the environment holds for another
        updates[PREFECT_API_AUTH_STRING] = server.auth
    with temporary_settings(updates):
        yield server.url
