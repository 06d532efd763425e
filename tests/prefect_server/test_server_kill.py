"""Issue 16, finding 11: `studio server` killed with -9 leaves nothing serving.

`studio server` execs Prefect's server (the pid started is the server) and, on a lease
storage that loses leases (in memory), runs the slot reconcile as a child the kernel
stops with it (engine/server_process.py). A real `studio server` with a reconcile
(DATABASE_URL on the test PostgreSQL, in-memory leases): kill -9 the pid started, the
port is free again and the reconcile child gone, and a restart on the same port binds
and answers; a SIGTERM then stops both. On its default filesystem lease storage it
starts no reconcile at all: Prefect's repossessor frees a dead holder's slots.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.prefect_server.conftest import BIN, ROOT, base_env, free_port

MEMORY_LEASES = "prefect.server.concurrency.lease_storage.memory"


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _until(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
    """Poll `check` (a guard against hanging, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def _healthy(port: int) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200
    return False


@pytest.fixture
def server_env(tmp_path: Path, postgres_url: str) -> dict[str, str]:
    from tests.infra.postgres import create_database

    env = {
        **base_env(),
        "DATABASE_URL": create_database(postgres_url),
        "STUDIO_HOME": str(tmp_path / "studio"),
        "LOG_FILE": str(tmp_path / "studio" / "app.log"),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path}/prefect.db",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        "STUDIO_SLOT_RECONCILE_SECONDS": "1",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": MEMORY_LEASES,
    }
    init = subprocess.run([str(BIN / "studio"), "init"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert init.returncode == 0, init.stdout + init.stderr
    return env


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:  # each process group this test started, by its own id
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _start(tmp_path: Path, name: str, port: int, env: dict[str, str],
           started: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
    process = subprocess.Popen(
        [str(BIN / "studio"), "server", "--port", str(port)], cwd=ROOT, env=env,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    started.append(process)
    _until(lambda: _healthy(port) or process.poll() is not None, f"{name} not up")
    assert process.poll() is None, (tmp_path / f"{name}.log").read_text()
    return process


def test_kill_9_leaves_nothing_serving_and_a_restart_binds(
    tmp_path: Path, server_env: dict[str, str], started: list[subprocess.Popen[bytes]]
) -> None:
    port = free_port()

    def start(name: str) -> subprocess.Popen[bytes]:
        return _start(tmp_path, name, port, server_env, started)

    first = start("first")
    assert "prefect server start" in _cmdline(first.pid)  # the pid started is the server
    _until(lambda: len(_children(first.pid)) >= 1, "no reconcile child")
    reconcile = [p for p in _children(first.pid) if "engine.server_process" in _cmdline(p)]
    assert len(reconcile) == 1, [_cmdline(p) for p in _children(first.pid)]

    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    _until(lambda: _port_free(port), f"port {port} still bound after kill -9", timeout=30)
    _until(lambda: not _alive(reconcile[0]), "the reconcile outlived its server", timeout=30)

    second = start("second")  # the same port binds at once
    assert _healthy(port)
    again = [p for p in _children(second.pid) if "engine.server_process" in _cmdline(p)]
    second.send_signal(signal.SIGTERM)  # an ordinary stop ends both as well
    second.wait(timeout=60)
    for pid in again:
        _until(lambda pid=pid: not _alive(pid), "the reconcile outlived a stopped server",
               timeout=30)
    assert _port_free(port)


def test_no_reconcile_beside_a_server_whose_leases_outlive_it(
    tmp_path: Path, server_env: dict[str, str], started: list[subprocess.Popen[bytes]]
) -> None:
    env = {k: v for k, v in server_env.items() if k != "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"}
    server = _start(tmp_path, "filesystem", free_port(), env, started)
    time.sleep(2)  # a reconcile child would be started before the exec: it would be here
    assert _children(server.pid) == []
    assert "no slot reconcile" in (tmp_path / "filesystem.log").read_text()
