"""The local Prefect API of the embedded defaults, as a user meets it: `studio` commands in
subprocesses with no PREFECT_API_URL start one server, later commands reuse it, it stops
on `studio local-server stop` or when idle, and `STUDIO_LOCAL_SERVER=off` goes back to
Prefect's temporary server per command. The server asks for its own credential (a
request without it gets 401), and auth strings meant for another server in the user's
environment change nothing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from engine.local_server import IdleWatch, LocalServer

ROOT = Path(__file__).resolve().parents[2]
STUDIO = [str(Path(sys.executable).parent / "studio")]  # the console script users run


def user_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user's shell: no Prefect API configured, homes of their own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "STUDIO_"))}
    env.update(
        {
            "PREFECT_HOME": str(tmp_path / "prefect"),
            "STUDIO_HOME": str(tmp_path / "studio"),
            "LOG_FILE": str(tmp_path / "logs" / "app.log"),
        }
    )
    env.pop("DATABASE_URL", None)
    env.update(extra)
    return env


def studio(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*STUDIO, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def state(tmp_path: Path) -> dict | None:
    path = tmp_path / "prefect" / "studio-local-server.json"
    return json.loads(path.read_text()) if path.exists() else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def flow_run_names(url: str, auth: str) -> list[str]:
    answer = httpx.post(
        f"{url}/flow_runs/filter", json={"limit": 50}, timeout=10, auth=basic(auth)
    )
    answer.raise_for_status()
    return [run["name"] for run in answer.json()]


def basic(auth: str) -> tuple[str, str]:
    user, _, password = auth.partition(":")
    return user, password


def test_the_first_command_starts_the_server_and_the_next_reuses_it(tmp_path: Path) -> None:
    # credentials of another server in the user's shell: neither used nor in the way
    env = user_env(tmp_path, PREFECT_SERVER_API_AUTH_STRING="elsewhere:server",
                   PREFECT_API_AUTH_STRING="elsewhere:client")
    try:
        first = studio(env, "demo", "--pieces", "2")
        assert first.returncode == 0, first.stdout + first.stderr
        started = state(tmp_path)
        assert started is not None and alive(started["pid"])
        state_file = tmp_path / "prefect" / "studio-local-server.json"
        assert state_file.stat().st_mode & 0o777 == 0o600  # it holds the auth string
        assert started["auth"] and "elsewhere" not in started["auth"]
        anonymous = httpx.post(f"{started['url']}/flow_runs/filter", json={}, timeout=10)
        assert anonymous.status_code == 401
        wrong = httpx.post(f"{started['url']}/flow_runs/filter", json={}, timeout=10,
                           auth=basic("elsewhere:client"))
        assert wrong.status_code == 401
        second = studio(env, "batch", "run", "--avatar", "demo", "--pieces", "2")
        assert second.returncode == 0, second.stdout + second.stderr
        assert state(tmp_path) == started  # the same process and address
        assert "Starting temporary server" not in first.stdout + second.stdout
        settings = httpx.get(f"{started['url']}/admin/settings", timeout=10,
                             auth=basic(started["auth"])).json()["server"]
        assert settings["concurrency"]["maximum_concurrency_slot_wait_seconds"] == 1.0
        assert settings["concurrency"]["lease_storage"] == "engine.lease_storage"
        assert settings["services"]["repossessor"]["loop_seconds"] == 5.0
        names = flow_run_names(started["url"], started["auth"])
        assert names.count("content-batch-demo-2") == 2  # both runs on the one server
        status = studio(env, "local-server", "status")
        assert status.returncode == 0 and started["url"] in status.stdout
    finally:
        stopped = studio(env, "local-server", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert state(tmp_path) is None
    assert not alive(started["pid"])
    assert studio(env, "local-server", "status").returncode == 1


def test_an_idle_server_stops_on_its_own_and_a_stale_state_file_is_replaced(
    tmp_path: Path,
) -> None:
    env = user_env(tmp_path, STUDIO_LOCAL_SERVER_IDLE_SECONDS="3")
    (tmp_path / "prefect").mkdir(parents=True)
    stale = {"pid": 2**22 + 7, "url": "http://127.0.0.1:9/api"}  # no such process
    (tmp_path / "prefect" / "studio-local-server.json").write_text(json.dumps(stale))
    try:
        done = studio(env, "demo", "--pieces", "1")
        assert done.returncode == 0, done.stdout + done.stderr
        started = state(tmp_path)
        assert started is not None and started != stale
        deadline = time.monotonic() + 60
        while alive(started["pid"]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not alive(started["pid"])  # idle for 3 s: it exited by itself
        assert state(tmp_path) is None  # and took its state file with it
    finally:
        studio(env, "local-server", "stop")


def test_off_uses_prefects_temporary_server_per_command(tmp_path: Path) -> None:
    # Prefect's own server starts inside the command; its 20 s start-up limit is short on
    # a loaded CI machine (CI once timed out there), a setting of Prefect's that a user
    # raises the same way
    env = user_env(
        tmp_path, STUDIO_LOCAL_SERVER="off", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120"
    )
    done = studio(env, "demo", "--pieces", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert state(tmp_path) is None  # nothing started that outlives the command
    assert "5/5 published" not in done.stdout and "1/1 published" in done.stdout


def test_an_api_url_in_the_environment_wins(tmp_path: Path, monkeypatch) -> None:
    from engine import local_server

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert local_server.ensure_started() is None
    monkeypatch.delenv("PREFECT_API_URL")
    (tmp_path / "profiles.toml").write_text(
        '[profiles.default]\nPREFECT_API_URL = "http://10.0.0.1:4200/api"\n'
    )
    assert local_server.ensure_started() is None  # the profile names a server: Prefect's
    assert not (tmp_path / "studio-local-server.json").exists()


def test_idle_watch_counts_open_connections() -> None:
    release = asyncio.Event()

    async def app(scope, receive, send) -> None:
        await release.wait()

    async def run() -> None:
        watch = IdleWatch(app)
        call = asyncio.create_task(watch({"type": "http"}, None, None))
        await asyncio.sleep(0.05)
        assert watch.open == 1 and watch.idle_for() == 0.0
        release.set()
        await call
        await asyncio.sleep(0.05)
        assert watch.open == 0 and watch.idle_for() >= 0.04

    asyncio.run(run())


def test_a_dead_server_is_not_waited_for() -> None:
    server = LocalServer(pid=2**22 + 9, url="http://127.0.0.1:9/api")
    started = time.monotonic()
    assert server.wait_ready(timeout=30) is False
    assert time.monotonic() - started < 5



def test_an_api_in_prefects_own_settings_wins(monkeypatch) -> None:
    """In-process (the CLI under a harness, a worker): Prefect's settings name the API."""
    from engine import local_server

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert local_server.wanted() is False


def test_an_operator_sets_the_servers_settings_from_the_environment(monkeypatch) -> None:
    """The slot-wait bound (and every other server setting the project picks) is a
    default: the local server and `studio server` keep an operator's value."""
    from cli.server import server_environment
    from engine.local_server import SERVER_SETTINGS, server_env

    key = "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS"
    assert SERVER_SETTINGS[key] == "1"
    monkeypatch.delenv(key, raising=False)
    assert server_env("studio:x")[key] == "1"
    assert server_environment()[key] == "1"
    monkeypatch.setenv(key, "3")
    assert server_env("studio:x")[key] == "3"
    assert server_environment()[key] == "3"
