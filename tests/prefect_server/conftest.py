"""A real `studio server` and a real process worker, as a README reader runs them.

Once per session: `studio server` in a subprocess (Prefect's server with its own
PREFECT_HOME, a free port, SQLite, the UI at /, and the credential it generates: every
request of this harness, the CLI, the worker and the browser sends it, as the README's
"On Prefect" says), the `studio-pool` process work pool, `prefect deploy --all` from
the repository root, and `prefect worker start --pool studio-pool --type process`.
Worker and flow-run processes get the project's environment: a temporary STUDIO_HOME
and a database on the test PostgreSQL; none of the PREFECT_* variables this test
process set for itself (e.g. PREFECT_LOGGING_EXTRA_LOGGERS), so a run's logs reach
Prefect the way they do for a user.

Kept fast for CI: the worker asks for work every second, the server's scheduler is off
(the deployments' schedules would otherwise start health checks and fan-outs of their
own), and batches are a few pieces.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
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
        return sock.getsockname()[1]


def base_env() -> dict[str, str]:
    """This machine's environment without any PREFECT_* or studio setting of this process."""
    studio_keys = {"DATABASE_URL", "STUDIO_HOME", "LOG_FILE"}
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PREFECT_") and k not in studio_keys
    }


class RetryingTransport(httpx.HTTPTransport):
    """Retries what Prefect's server says to retry (503: its database was busy, e.g.
    SQLite locked under load; 429), as Prefect's own client does, honouring Retry-After."""

    ATTEMPTS = 6

    def __init__(self) -> None:
        # a fresh connection per request: a kept-alive one the server closes as idle
        # (uvicorn's 5 s) while a request is sent on it is reset, and a POST cannot be
        # retried safely
        super().__init__(limits=httpx.Limits(max_keepalive_connections=0))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(self.ATTEMPTS):
            response = super().handle_request(request)
            if response.status_code not in (429, 503) or attempt == self.ATTEMPTS - 1:
                return response
            response.read()
            response.close()
            time.sleep(float(response.headers.get("Retry-After") or 0.5 * 2**attempt))
        raise AssertionError("unreachable")


@dataclass
class PrefectStack:
    """The running server and worker, and how to talk to them."""

    api_url: str
    ui_url: str
    env: dict[str, str]
    home: Path
    database_url: str
    processes: list[subprocess.Popen] = field(default_factory=list)
    logs: dict[str, Path] = field(default_factory=dict)

    @property
    def auth_string(self) -> str:
        return self.env["PREFECT_API_AUTH_STRING"]

    def client(self) -> httpx.Client:
        """A REST client with the credential and a CSRF token (writes need both)."""
        user, _, password = self.auth_string.partition(":")
        csrf_client = str(uuid.uuid4())
        token = httpx.get(f"{self.api_url}/csrf-token", params={"client": csrf_client},
                          auth=(user, password), timeout=30)
        token.raise_for_status()
        headers = {"Prefect-Csrf-Token": token.json()["token"],
                   "Prefect-Csrf-Client": csrf_client}
        return httpx.Client(base_url=self.api_url, timeout=30, auth=(user, password),
                            headers=headers, transport=RetryingTransport())

    def log_in(self, page: Any) -> None:
        """Log a Playwright page into the UI the way a person does: its login form asks
        for the auth string (the UI then sends it with every API call)."""
        page.goto(f"{self.ui_url}/", wait_until="networkidle")
        page.wait_for_url(lambda url: "login" in url)  # nothing shown without it
        field = page.locator("input").first
        field.wait_for()
        field.fill(self.auth_string)
        field.press("Enter")
        page.wait_for_url(lambda url: "login" not in url)

    def deployment_id(self, name: str) -> str:
        with self.client() as api:
            found = api.get(f"/deployments/name/{name}")
            found.raise_for_status()
            return found.json()["id"]

    def create_run(self, deployment: str, parameters: dict[str, Any], **extra: Any):
        """POST /deployments/{id}/create_flow_run, as any REST client would."""
        with self.client() as api:
            return api.post(
                f"/deployments/{self.deployment_id(deployment)}/create_flow_run",
                json={"parameters": parameters, **extra},
            )

    def read_run(self, run_id: str) -> dict[str, Any]:
        with self.client() as api:
            found = api.get(f"/flow_runs/{run_id}")
            found.raise_for_status()
            return found.json()

    def wait_final(self, run_id: str, timeout: float = 240) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.read_run(run_id)
            if run["state_type"] in FINAL:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"run {run['name']} still {run['state_type']} after {timeout}s; "
                    f"worker log tail:\n{self.tail('worker')}"
                )
            time.sleep(1)

    def runs(self, flow_runs: dict[str, Any]) -> list[dict[str, Any]]:
        with self.client() as api:
            found = api.post("/flow_runs/filter", json={"flow_runs": flow_runs, "limit": 200})
            found.raise_for_status()
            return found.json()

    def children(self, run_id: str) -> list[dict[str, Any]]:
        return self.runs({"parent_flow_run_id": {"any_": [run_id]}})

    def log_messages(self, run_ids: list[str]) -> list[str]:
        with self.client() as api:
            found = api.post(
                "/logs/filter",
                json={
                    "logs": {"flow_run_id": {"any_": run_ids}},
                    "sort": "TIMESTAMP_ASC",
                    "limit": 200,
                },
            )
            found.raise_for_status()
            return [entry["message"] for entry in found.json()]

    def wait_logs(
        self, run_ids: list[str], done: Callable[[list[str]], bool], timeout: float = 30
    ) -> list[str]:
        """A run's last logs leave its process as it exits: give them a moment."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self.log_messages(run_ids)
            if done(messages) or time.monotonic() > deadline:
                return messages
            time.sleep(1)

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.logs.get(name)
        if not path or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def prefect(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "prefect"), "--no-prompt", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def studio(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "studio"), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _start(name: str, args: list[str], env: dict[str, str], stack: PrefectStack):
    log_path = stack.home / f"{name}.log"
    stack.logs[name] = log_path
    log_file = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stack.processes.append(process)
    return process


def _wait_healthy(stack: PrefectStack, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited:\n{stack.tail('server')}")
        try:
            if httpx.get(f"{stack.api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"prefect server not healthy after {timeout}s:\n{stack.tail('server')}")


def _stop(processes: list[subprocess.Popen]) -> None:
    """Stop what this fixture started (each process group by its own id), worker first."""
    for process in reversed(processes):
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
    for process in reversed(processes):
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def prefect_stack(tmp_path_factory, postgres_url) -> Iterator[PrefectStack]:
    from tests.infra.postgres import create_database

    home = tmp_path_factory.mktemp("prefect-stack")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    database_url = create_database(postgres_url)
    env = {
        **base_env(),
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "STUDIO_HOME": str(home / "studio"),
        "LOG_FILE": str(home / "studio" / "logs" / "app.log"),
        "DATABASE_URL": database_url,
        # a worker that asks for work every second, and starts a run as soon as it is due
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
    }
    stack = PrefectStack(
        api_url=api_url, ui_url=f"http://127.0.0.1:{port}", env=env, home=home,
        database_url=database_url,
    )
    server_env = {
        **env,
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        # the deployments' schedules would start runs of their own during the tests
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true",
        # the UI's pages call this API (it would otherwise point at the default port 4200)
        "PREFECT_UI_API_URL": api_url,
    }
    server_env.pop("PREFECT_API_URL")
    try:
        initialised = stack.studio("init")  # before the server: its slot reconcile reads it
        assert initialised.returncode == 0, initialised.stdout + initialised.stderr
        server = _start(
            "server",
            [str(BIN / "studio"), "server", "--host", "127.0.0.1", "--port", str(port)],
            server_env,
            stack,
        )
        _wait_healthy(stack, server)
        auth_file = home / "prefect" / "studio-api-auth-string"  # generated by studio server
        env["PREFECT_API_AUTH_STRING"] = auth_file.read_text().strip()
        for step in (
            stack.prefect("work-pool", "create", "studio-pool", "--type", "process"),
            stack.prefect("deploy", "--all"),
        ):
            assert step.returncode == 0, f"{step.args}: {step.stdout}{step.stderr}"
        _start(
            "worker",
            [str(BIN / "prefect"), "worker", "start", "--pool", "studio-pool",
             "--type", "process", "--name", "studio-test-worker"],
            env,
            stack,
        )
        yield stack
    finally:
        _stop(stack.processes)


@pytest.fixture
def stack_db(prefect_stack, monkeypatch):
    """This test process on the stack's studio database (to add avatars, read rows)."""
    from tests.conftest import use_database

    settings = use_database(
        monkeypatch, Path(prefect_stack.env["STUDIO_HOME"]), prefect_stack.database_url
    )
    yield settings
    from studio.db.engine import dispose_engines

    dispose_engines()


def failing_image_env(comfyui_url: str) -> dict[str, str]:
    """Job variables that point one run's image step at a failing ComfyUI only."""
    return {
        "COMFYUI_ENABLED": "true",
        "COMFYUI_ENDPOINT": comfyui_url,
        "COMFYUI_FALLBACK_ON_ERROR": "false",
        "COMFYUI_POLL_INTERVAL": "0.05",
        "LORA_INFERENCE_PROVIDER_ORDER": "comfyui",
    }


@dataclass
class FailedBatch:
    run: dict[str, Any]
    #: prompts the failing ComfyUI received (the worker's run really called it)
    prompts: int


@pytest.fixture(scope="session")
def failed_batch(prefect_stack) -> FailedBatch:
    """One batch whose every image fails, run by the worker (shared by the API and UI tests).

    A new avatar, so no cached image of it can stand in; the emulator's every prompt
    ends in ComfyUI's execution error.
    """
    from tests.emulators.base import Behaviour
    from tests.emulators.comfyui import ComfyUIEmulator

    name = f"unlucky-{uuid.uuid4().hex[:6]}"
    added = prefect_stack.studio(
        "avatar", "add", name, "--niche", "travel", "--cadence", "on-demand",
        "--lora", f"https://w.example/{name}.safetensors",
    )
    assert added.returncode == 0, added.stdout + added.stderr
    with ComfyUIEmulator(Behaviour(seed=5, failure_rate=1.0)) as comfyui:
        created = prefect_stack.create_run(
            "content-batch/on-demand",
            {"avatar_id": name, "num_pieces": 2, "include_hooks": False},
            job_variables={"env": failing_image_env(comfyui.url)},
        )
        assert created.status_code in (200, 201), created.text  # 200: Prefect's created-at race
        run = prefect_stack.wait_final(created.json()["id"])
        return FailedBatch(run=run, prompts=comfyui.counters.requests("prompt"))


def chromium_executable() -> str | None:
    """Debian's chromium; installed with apt-get when missing and this user may (CI is root)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found or shutil.which("apt-get") is None or os.geteuid() != 0:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        if subprocess.run(command, env=env, capture_output=True, timeout=900).returncode != 0:
            return None
    return shutil.which("chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium driven by playwright (`executable_path`: playwright's own browser
    download cannot work offline); skipped, saying why, only where neither can be had."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[test]')")
    executable = chromium_executable()
    if executable is None:
        pytest.skip("no chromium, and apt-get could not install it here (needs root and apt)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage"],  # root in a container
        )
        yield launched
        launched.close()
