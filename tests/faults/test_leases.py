"""`studio server` keeps provider leases through a restart; leases are short and renewed;
the lease census and the slot reconcile run only on a server that loses leases; the
local server reaps expired leases itself.

- (fast, in CI) a lease taken before the server is killed -9 is still known after it
  starts again, so its release frees the slot; with plain `prefect server start`
  (leases in memory) the same release frees nothing: the leak issue 10 measured. There
  the census records and the reconcile frees the slot (no live process holds it); on
  `studio server` (filesystem leases) the census records nothing and the reconcile does
  nothing. Each server reports the slot-wait bound it runs with (`GET /api/admin/settings`).
- (in CI, ~90 s) the local server of `studio batch run`: a slot whose holder is killed
  -9 is freed by Prefect's repossessor within the 60 s lease plus its loop.
- (slow, `make faults`) a slot held by a live process outlives its 60 s lease because
  Prefect renews it; the holder killed -9, the slot is free again within 90 s.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
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
def api(url: str, auth: str | None = None):  # type: ignore[no-untyped-def]
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth}):
        yield


@contextmanager
def local_server(home: Path, **extra: str) -> Iterator[dict[str, str]]:
    """The local server `studio batch run` starts (engine/local_server.py) in `home`, with
    `extra` in its environment; the environment a client of it runs with. Stopped with
    `studio local-server stop`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "STUDIO_"))}
    env.update({"PREFECT_HOME": str(home), "PYTHONPATH": str(ROOT), **extra})
    start = ("import sys; from engine.local_server import ensure_started; "
             "sys.exit(0 if ensure_started().wait_ready() else 1)")
    started = subprocess.run([sys.executable, "-c", start], cwd=ROOT, env=env, timeout=180)
    try:
        assert started.returncode == 0, (home / "studio-local-server.log").read_text()[-3000:]
        state = json.loads((home / "studio-local-server.json").read_text())
        yield {**env, "PREFECT_API_URL": state["url"], "PREFECT_API_AUTH_STRING": state["auth"]}
    finally:
        subprocess.run([str(BIN / "studio"), "local-server", "stop"], cwd=ROOT, env=env,
                       capture_output=True, timeout=60)


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


async def _leak(name: str) -> None:
    """A slot counted with no lease at all (what a server that lost its leases keeps)."""
    from prefect import get_client

    async with get_client() as client:
        await client.increment_concurrency_slots(names=[name], slots=1, mode="concurrency")


async def _server_settings() -> dict:
    from prefect import get_client

    async with get_client() as client:
        return (await client.request("GET", "/admin/settings")).json()


@pytest.mark.parametrize(
    ("command", "left", "slot_wait", "census"),
    [("studio", 0, 1.0, False), ("prefect", 1, 30.0, True)],
)
async def test_a_lease_survives_a_server_restart_only_with_studio_server(
    tmp_path, command, left, slot_wait, census, studio_env
):
    from engine.lease_census import LeaseCensus
    from engine.slot_reconcile import reconcile_provider_slots

    with running(tmp_path / command, command) as server:
        assert await _lease_then_restart_then_release(server) == left
        with api(server.url):
            concurrency = (await _server_settings())["server"]["concurrency"]
            assert concurrency["maximum_concurrency_slot_wait_seconds"] == slot_wait
            if left == 0:
                await _leak("provider:restart")  # a leak the reconcile must leave alone
            recorder = LeaseCensus()
            row = recorder.reserve("restart")
            assert recorder.recording() is census
            assert len([*recorder.rows("restart")]) == (1 if census else 0)
            if row is not None:
                recorder.forget(row)  # never asked for: the server does not count it
            recorder.stop()
            freed = {r.limit: r.freed for r in await reconcile_provider_slots(LeaseCensus())}
            if census:  # in-memory leases: the reconcile frees the slot nobody holds
                assert freed == {"provider:restart": 1}
                assert await _active("provider:restart") == 0
            else:  # durable leases: neither census nor reconcile runs
                assert freed == {}
                assert await _active("provider:restart") == 1


async def test_the_local_server_frees_a_dead_holders_slot_itself(tmp_path):
    """Prefect's repossessor runs in the local server (ephemeral mode runs none by
    itself): the lease of a holder killed -9 expires (60 s, renewed while it lived) and
    the server frees its slot within one repossessor loop (1 s here) of that."""
    from engine.provider_slots import LEASE_SECONDS

    loop = 1.0
    with local_server(tmp_path / "prefect",
                      PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS=str(loop)) as env, \
            api(env["PREFECT_API_URL"], env["PREFECT_API_AUTH_STRING"]):
        await _limit("provider:reaped", 1)
        holder = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.slot_holder", "reaped"], cwd=ROOT,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == b"HOLDING", holder.stderr.read()
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=10)
            killed = time.monotonic()
            assert await _active("provider:reaped") == 1  # nobody released it
            while await _active("provider:reaped") and time.monotonic() - killed < 120:
                await asyncio.sleep(0.5)
            freed_after = time.monotonic() - killed
        finally:
            holder.kill()
        assert await _active("provider:reaped") == 0
    print(f"\n[lease reaped] slot free {freed_after:.0f} s after its holder's kill -9")
    assert freed_after < LEASE_SECONDS + loop + 15  # 15 s: the scheduler's slack under load


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
