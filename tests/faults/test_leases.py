"""`studio server` keeps provider leases through a restart; leases are short and renewed.

- (fast, in CI) a lease taken before the server is killed -9 is still known after it
  starts again, so its release frees the slot; with plain `prefect server start`
  (leases in memory) the same release frees nothing: the leak issue 10 measured, which
  the slot reconcile then frees (no live process holds it).
- (slow, `make faults`) a slot held by a live process outlives its 60 s lease because
  Prefect renews it; the holder killed -9, the slot is free again within 90 s.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, home: Path, command: str, extra: dict[str, str] | None = None) -> None:
        self.home, self.command, self.port = home, command, _free_port()
        self.extra = extra or {}
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update({"PREFECT_HOME": str(self.home), "PREFECT_UI_ENABLED": "false",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(ROOT),
                    "PREFECT_API_URL": self.url})
        env.pop("DATABASE_URL", None)
        env.update(self.extra)
        return env

    def start(self) -> None:
        # without a credential (loopback): this test is about leases, not auth
        program = [str(BIN / "studio"), "server", "--no-auth"] if self.command == "studio" else [
            str(BIN / "prefect"), "server", "start"]
        log = open(self.home / "server.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [*program, "--host", "127.0.0.1", "--port", str(self.port)], cwd=ROOT,
            env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.home / "server.log").read_text()[-3000:]
            with suppress(OSError), urllib.request.urlopen(f"{self.url}/health", timeout=2):
                return
            time.sleep(0.25)
        raise AssertionError("server did not start")

    def kill(self) -> None:
        assert self.process is not None
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@contextmanager
def running(home: Path, command: str, extra: dict[str, str] | None = None) -> Iterator[Server]:
    home.mkdir(parents=True, exist_ok=True)
    server = Server(home, command, extra)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@contextmanager
def api(url: str):  # type: ignore[no-untyped-def]
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        yield


async def _limit(name: str, size: int) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    async with get_client() as client:
        await client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=size)
        )


async def _active(name: str) -> int:
    from prefect import get_client

    async with get_client() as client:
        return int((await client.read_global_concurrency_limit_by_name(name)).active_slots)


async def _lease_then_restart_then_release(server: Server) -> int:
    """Slots still counted after a lease taken before a kill -9 is released after it."""
    from prefect import get_client

    with api(server.url):
        await _limit("provider:restart", 2)
        async with get_client() as client:
            answer = await client.increment_concurrency_slots_with_lease(
                names=["provider:restart"], slots=1, mode="concurrency", lease_duration=60,
            )
        lease_id = answer.json()["lease_id"]
        server.kill()
        server.start()  # same port, same PREFECT_HOME and database
        async with get_client() as client:
            await client.release_concurrency_slots_with_lease(lease_id=lease_id)
        return await _active("provider:restart")


@pytest.mark.parametrize(("command", "left"), [("studio", 0), ("prefect", 1)])
async def test_a_lease_survives_a_server_restart_only_with_studio_server(
    tmp_path, command, left, studio_env
):
    from engine.lease_census import LeaseCensus
    from engine.slot_reconcile import reconcile_provider_slots

    with running(tmp_path / command, command) as server:
        assert await _lease_then_restart_then_release(server) == left
        with api(server.url):  # whatever the server, the reconcile frees the leaked slot
            freed = {r.limit: r.freed for r in await reconcile_provider_slots(LeaseCensus())}
            assert freed == {"provider:restart": left}
            assert await _active("provider:restart") == 0


@contextmanager
def redis_server(home: Path) -> Iterator[str]:
    """A throwaway Redis (the Debian `redis-server` package) on loopback; its URL."""
    port = _free_port()
    home.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", str(home)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.mark.skipif(
    shutil.which("redis-server") is None or importlib.util.find_spec("prefect_redis") is None,
    reason="needs redis-server (apt-get install redis-server) and prefect-redis",
)
async def test_a_lease_survives_a_server_restart_on_redis_lease_storage(tmp_path):
    """Several replicas share their leases through Redis: `studio server` keeps a
    PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE given in the environment."""
    with redis_server(tmp_path / "redis") as url, running(
        tmp_path / "studio-redis", "studio",
        {"PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
         "PREFECT_REDIS_MESSAGING_URL": url},
    ) as server:
        assert await _lease_then_restart_then_release(server) == 0
        assert "prefect_redis.lease_storage" in (server.home / "server.log").read_text()
        assert not (server.home / "concurrency_leases").exists()  # in Redis, not on disk


@pytest.mark.faults
@pytest.mark.skipif(not os.environ.get("STUDIO_FAULTS"),
                    reason="slow fault suite: make faults (STUDIO_FAULTS=1)")
async def test_a_slot_is_renewed_while_held_and_free_within_90_s_of_its_holder_dying(tmp_path):
    with running(tmp_path / "studio", "studio") as server, api(server.url):
        await _limit("provider:holder", 1)
        holder = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.slot_holder", "holder"], cwd=ROOT,
            env=server.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == b"HOLDING"
            time.sleep(75)  # longer than the 60 s lease: only renewal keeps it
            assert await _active("provider:holder") == 1
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)
            killed = time.monotonic()
            while await _active("provider:holder") and time.monotonic() - killed < 90:
                time.sleep(1)
            freed_after = time.monotonic() - killed
        finally:
            holder.kill()
        print(f"\n[FAULT lease expiry] slot free {freed_after:.0f} s after its holder's kill -9")
        assert await _active("provider:holder") == 0
        assert freed_after < 90
