"""Issue 16, "What to build" 1: the README's "On Prefect" block runs as written.

The block is read from README.md (tests/prefect_server/readme_block.py), not retyped,
and run line by line as an operator on a fresh clone would: a fresh PostgreSQL database
(its URL put into the `export DATABASE_URL=` line), `studio init` and `studio avatar add
nova` against it, `studio server` in the background on a free port (the only other
substitution, with the ComfyUI emulator's URL in the `COMFYUI_ENDPOINT` line), the work
pool, `prefect deploy --all`, limits and automations, and the worker line started TWICE,
each worker with its own STUDIO_HOME (scratch only), then `studio batch submit` to a
Completed run and `studio batch status <run-id>`. Then 4 one-piece batches at once (more
than one worker's `--limit 3`): every batch completes and each worker ran at least one.

Production as it is: no ALLOW_STAND_INS (stand-ins would be refused or held), HOME is a
temporary folder so `~/.prefect` (the server's PREFECT_HOME, its auth string file) is
the real default path. Only the workers' poll interval is shortened, for CI.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.prefect_server.conftest import FINAL, RetryingTransport, base_env, free_port
from tests.prefect_server.readme_block import ROOT, Walkthrough, on_prefect_lines


class Processes:
    """The long-lived lines, each in its own process group (stopped by its own id)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, line: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        process = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.started.append(process)
        return process

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.root / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(self.started):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.stop()


def _wait_until(done, what: str, process: subprocess.Popen[bytes], log: str,
                timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert process.poll() is None, f"{what}: the process exited\n{log}"
        assert time.monotonic() < deadline, f"{what} not after {timeout:.0f} s\n{log}"
        time.sleep(0.5)


def test_the_readme_on_prefect_block_runs_as_written_with_two_workers(
    tmp_path: Path, postgres_url: str, processes: Processes
) -> None:
    from sqlalchemy import create_engine, text

    from tests.emulators.comfyui import ComfyUIEmulator
    from tests.infra.postgres import create_database

    home = tmp_path / "home"  # ~ of the operator: ~/.prefect is the server's home
    home.mkdir()
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    auth_file = home / ".prefect" / "studio-api-auth-string"
    shell = {k: v for k, v in base_env().items()
             if k != "ALLOW_STAND_INS" and not k.startswith("COMFYUI_")}
    shell.update({
        "HOME": str(home),
        "STUDIO_HOME": str(tmp_path / "cli"),  # the CLI's scratch, out of the clone
        "LOG_FILE": str(tmp_path / "cli" / "app.log"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # CI: a worker asks for work every second
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
    })
    database_url = create_database(postgres_url)

    def start_server(line: str, env: dict[str, str]) -> None:
        assert line.startswith(".venv/bin/studio server"), line
        server = processes.start("server", line, env)
        _wait_until(lambda: _healthy(api) and auth_file.exists(), "studio server", server,
                    processes.tail("server"))

    workers: list[str] = []

    def start_worker(line: str, env: dict[str, str]) -> None:
        for n in (1, 2):  # two hosts: each its own STUDIO_HOME (scratch) and log
            name = f"worker{n}"
            own = {**env, "STUDIO_HOME": str(tmp_path / name),
                   "LOG_FILE": str(tmp_path / name / "app.log")}
            processes.start(name, f"{line} --name readme-{name}", own)
            workers.append(f"readme-{name}")

    def auth() -> tuple[str, str]:
        user, _, password = auth_file.read_text().strip().partition(":")
        return user, password

    final: dict[str, dict] = {}

    def wait_submitted(run_id: str) -> None:
        deadline = time.monotonic() + 300
        while True:
            run = httpx.get(f"{api}/flow_runs/{run_id}", auth=auth(), timeout=30).json()
            if run["state_type"] in FINAL:
                final[run_id] = run
                break
            assert time.monotonic() < deadline, (
                f"{run['state_name']} after 300 s\n{processes.tail('worker1')}\n"
                f"{processes.tail('worker2')}")
            time.sleep(1)
        assert run["state_type"] == "COMPLETED", (
            f"{run['state_name']}: {run['state']['message']}\n{processes.tail('worker1')}\n"
            f"{processes.tail('worker2')}")

    lines = on_prefect_lines()
    assert any(line.startswith("export DATABASE_URL=") for line in lines)
    assert any(line.endswith("studio init") for line in lines)
    with ComfyUIEmulator() as comfyui:
        walk = Walkthrough(env=shell, database_url=database_url, port=port,
                           comfyui_url=comfyui.url, start_server=start_server,
                           start_worker=start_worker, wait_submitted=wait_submitted)
        run_id = walk.run(lines)
        assert comfyui.counters.requests("prompt") >= 10  # real generations, no stand-in
        # either worker runs batches: 4 at once are more than one worker's --limit 3
        burst = _burst(api, auth(), count=4)
        for run_id_ in burst:
            wait_submitted(run_id_)
        for name in ("worker1", "worker2"):
            log = processes.tail(name, lines=100000)
            took = [run for run in [run_id, *burst] if f"submitting flow run '{run}'" in log]
            assert took, f"{name} ran no batch:\n{log}"

    status = next(out for line, out in walk.outputs.items() if "batch status" in line)
    assert "state: Completed" in status.stdout, status.stdout
    assert workers == ["readme-worker1", "readme-worker2"]
    pool_workers = httpx.post(f"{api}/work_pools/studio-pool/workers/filter", json={},
                              auth=auth(), timeout=30)
    if pool_workers.status_code == 403:  # CSRF: this read is a POST
        pool_workers = _with_csrf(api, auth(), "/work_pools/studio-pool/workers/filter")
    online = {w["name"] for w in pool_workers.json() if w.get("status") == "ONLINE"}
    assert set(workers) <= online, pool_workers.json()

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            pieces = connection.execute(text(
                "SELECT p.status, p.stand_ins FROM content_piece p JOIN avatar a "
                "ON a.id = p.avatar_id WHERE a.name = 'nova'")).all()
    finally:
        engine.dispose()
    assert len(pieces) == 10 + 4, pieces
    # real images on either worker (hooks and moderation may be the local ones: no
    # Anthropic/OpenAI key is configured in the block)
    assert not any(m.startswith("image:") for _status, marks in pieces for m in marks or [])
    assert any(status == "published" for status, _ in pieces), pieces
    assert final[run_id]["state_type"] == "COMPLETED"


def _healthy(api: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    return False


def _with_csrf(api: str, auth: tuple[str, str], path: str) -> httpx.Response:
    import uuid

    client = str(uuid.uuid4())
    token = httpx.get(f"{api}/csrf-token", params={"client": client}, auth=auth, timeout=30)
    token.raise_for_status()
    return httpx.post(f"{api}{path}", json={}, auth=auth, timeout=30, headers={
        "Prefect-Csrf-Token": token.json()["token"], "Prefect-Csrf-Client": client})


def _burst(api: str, auth: tuple[str, str], count: int) -> list[str]:
    """`count` one-piece runs of content-batch/on-demand for nova, created at once."""
    import uuid

    client = str(uuid.uuid4())
    token = httpx.get(f"{api}/csrf-token", params={"client": client}, auth=auth, timeout=30)
    headers = {"Prefect-Csrf-Token": token.json()["token"], "Prefect-Csrf-Client": client}
    with httpx.Client(base_url=api, auth=auth, headers=headers, timeout=30,
                      transport=RetryingTransport()) as rest:
        deployment = rest.get("/deployments/name/content-batch/on-demand").json()["id"]
        made = [rest.post(f"/deployments/{deployment}/create_flow_run",
                          json={"parameters": {"avatar_id": "nova", "num_pieces": 1}})
                for _ in range(count)]
    # a new run is 201, or 200 when its created timestamp precedes the handler's now
    # (prefect/server/api/deployments.py: `if model.created >= right_now`)
    assert all(m.status_code in (200, 201) for m in made), [m.text for m in made]
    return [m.json()["id"] for m in made]
