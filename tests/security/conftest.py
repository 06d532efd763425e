"""A real `studio server` WITH its credential, on loopback, in a subprocess.

`secured_server` (one per test module) starts `studio server --host 127.0.0.1 --port P`
as the README says, with no auth string configured: the command generates one into
`$PREFECT_HOME/studio-api-auth-string` (0600), and the fixture reads it from there, as
an operator's clients do. The server runs Prefect's SQLite database in its own
PREFECT_HOME, the UI on (it must keep working with auth), the scheduler off (the
deployments' schedules would start runs of their own), and its filesystem lease storage
(so no slot reconcile beside it; a test that needs one passes in-memory lease storage to
`start_secured_server`, and the reconcile then runs every 2 s against the studio
database on the test PostgreSQL).

Other modules use it as it is, or `start_secured_server(root, postgres_url, **env)` for
one of their own. `SecuredServer.http()` is an httpx client with the credential (and a
CSRF token, which Prefect requires for writes once CSRF protection is on);
`SecuredServer.anonymous()` has neither. `client_env` is what a client, a worker and its
flow runs get: PREFECT_API_URL and PREFECT_API_AUTH_STRING, the studio's home and
database, no other PREFECT_* of this process.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env() -> dict[str, str]:
    """This machine's environment without any PREFECT_* or studio setting of this process."""
    studio_keys = {"DATABASE_URL", "STUDIO_HOME", "LOG_FILE"}
    return {
        k: v for k, v in os.environ.items()
        if not k.startswith("PREFECT_") and k not in studio_keys
    }


def basic(auth: str) -> tuple[str, str]:
    """httpx's basic-auth pair for a `user:password` auth string (as Prefect sends it)."""
    user, _, password = auth.partition(":")
    return user, password


@dataclass
class SecuredServer:
    """A running `studio server` with its credential, and how to talk to it."""

    api_url: str
    ui_url: str
    port: int
    root: Path
    home: Path  # the server's PREFECT_HOME (where the auth string file is)
    auth_file: Path
    database_url: str
    client_env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def auth_string(self) -> str:
        return self.auth_file.read_text().strip()

    def http(self) -> httpx.Client:
        """A REST client with the credential and a CSRF token (writes need both)."""
        auth = basic(self.auth_string)
        csrf_client = str(uuid.uuid4())
        token = httpx.get(f"{self.api_url}/csrf-token", params={"client": csrf_client},
                          auth=auth, timeout=30)
        token.raise_for_status()
        headers = {"Prefect-Csrf-Token": token.json()["token"],
                   "Prefect-Csrf-Client": csrf_client}
        return httpx.Client(base_url=self.api_url, timeout=30, auth=auth, headers=headers)

    def anonymous(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, timeout=30)

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300,
            ) -> subprocess.CompletedProcess[str]:
        """A command of this checkout's venv (`studio ...`, `prefect ...`) as a client."""
        return subprocess.run(
            [str(BIN / args[0]), *args[1:]], cwd=ROOT, env=env or self.client_env,
            capture_output=True, text=True, timeout=timeout, check=False,
            stdin=subprocess.DEVNULL,  # never an interactive prompt
        )

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None,
              ) -> subprocess.Popen[bytes]:
        """A long-running process (a worker) stopped with the server; output in root/name.log."""
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        process = subprocess.Popen(
            args, cwd=ROOT, env=env or self.client_env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.others.append(process)
        return process

    def tail(self, name: str = "server", lines: int = 40) -> str:
        path = self.root / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def wait_final(self, run_id: str, timeout: float = 240) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.http() as api:
            while True:
                run = api.get(f"/flow_runs/{run_id}").json()
                if run["state_type"] in FINAL:
                    return run
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"run {run['name']} still {run['state_type']} after {timeout:.0f} s; "
                        f"worker log:\n{self.tail('worker')}"
                    )
                time.sleep(1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop one process group this fixture started, by its own id."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _wait_ready(server: SecuredServer, timeout: float = 180) -> None:
    """Until the API answers /health (no credential needed) and the auth file exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"studio server exited:\n{server.tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if (httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200
                    and server.auth_file.exists()):
                return
        time.sleep(0.5)
    raise RuntimeError(f"studio server not ready after {timeout:.0f} s:\n{server.tail()}")


@contextlib.contextmanager
def start_secured_server(
    root: Path, postgres_url: str, *args: str, **env_overrides: str
) -> Iterator[SecuredServer]:
    """`studio server` with its generated credential under `root`; stopped on exit (with
    any process started through it). `args` go to `studio server`, `env_overrides` to
    its environment."""
    from tests.infra.postgres import create_database

    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    home = root / "prefect"
    database_url = create_database(postgres_url)
    studio = {
        "STUDIO_HOME": str(root / "studio"),
        "LOG_FILE": str(root / "studio" / "logs" / "app.log"),
        "DATABASE_URL": database_url,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    server_env = {
        **base_env(), **studio,
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{root}/prefect.db",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        "PREFECT_UI_API_URL": api_url,
        "STUDIO_SLOT_RECONCILE_SECONDS": "2",
        **env_overrides,
    }
    initialised = subprocess.run(  # the studio database first: the reconcile's census
        [str(BIN / "studio"), "init"], cwd=ROOT, env={**base_env(), **studio},
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert initialised.returncode == 0, initialised.stdout + initialised.stderr
    log = root / "server.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [str(BIN / "studio"), "server", "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=ROOT, env=server_env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = SecuredServer(
        api_url=api_url, ui_url=f"http://127.0.0.1:{port}", port=port, root=root, home=home,
        auth_file=home / "studio-api-auth-string", database_url=database_url,
        client_env={}, process=process, log=log,
    )
    try:
        _wait_ready(server)
        server.client_env = {
            **base_env(), **studio,
            "PREFECT_API_URL": api_url,
            "PREFECT_API_AUTH_STRING": server.auth_string,
            # a worker that asks for work every second and starts a run as soon as it is due
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "5",
        }
        yield server
    finally:
        for other in reversed(server.others):
            _stop(other)
        _stop(process)


@pytest.fixture(scope="module")
def secured_server(tmp_path_factory, postgres_url) -> Iterator[SecuredServer]:
    """One authenticated `studio server` for the test module (see the module docstring)."""
    with start_secured_server(tmp_path_factory.mktemp("secured-server"), postgres_url) as server:
        yield server
