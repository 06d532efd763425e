"""A small production-shaped cluster for the fault tests, started from real parts.

- a Prefect server (`prefect server start`) on its own PostgreSQL database;
- the pipeline's database (another PostgreSQL database) shared by every worker;
- SeaweedFS as the S3 store: a public content bucket and a private staging bucket;
- the ComfyUI and Replicate emulators (loopback, their real HTTP APIs);
- the deployments of prefect.yaml (`prefect deploy --all`), `studio limits apply` and
  `studio automations apply`, as an operator sets a server up;
- process workers (`prefect worker start`), each with its own STUDIO_HOME and env.

The tests talk to the server through the Prefect client with PREFECT_API_URL set for
the duration (`cluster.client()`), and read the shared database directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
POOL = "studio-pool"
REPLICATE_TOKEN = "r8_fault_token_0001"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dead_endpoint() -> str:
    """A loopback URL nobody listens on (a host whose ComfyUI is down)."""
    return f"http://127.0.0.1:{free_port()}"


@dataclass
class Cluster:
    root: Path
    prefect_db: str
    studio_db: str
    s3: Any
    content_bucket: str
    staging_bucket: str
    comfyui: Any
    replicate: Any
    api_url: str = ""
    #: the server's credential ("" for a server without one); every client sends it
    auth_string: str = ""
    server: subprocess.Popen[bytes] | None = None
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    # -- environment ------------------------------------------------------------------
    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "R2_"))}
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "PREFECT_API_URL": self.api_url,
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_LOGGING_EXTRA_LOGGERS": "studio",
                "DATABASE_URL": self.studio_db,
                "R2_ENDPOINT_URL": self.s3.endpoint_url,
                "R2_ACCESS_KEY_ID": self.s3.access_key,
                "R2_SECRET_ACCESS_KEY": self.s3.secret_key,
                "R2_BUCKET_NAME": self.content_bucket,
                "R2_PUBLIC_URL": self.s3.public_url(self.content_bucket),
                "R2_STAGING_BUCKET": self.staging_bucket,
                "COMFYUI_ENABLED": "true",
                "COMFYUI_ENDPOINT": self.comfyui.url,
                "COMFYUI_POLL_INTERVAL": "0.05",
                "REPLICATE_API_TOKEN": REPLICATE_TOKEN,
                "REPLICATE_BASE_URL": self.replicate.url,
                "REPLICATE_POLL_INTERVAL": "0.05",
                "LORA_INFERENCE_PROVIDER_ORDER": "comfyui,replicate",
                "PROVIDER_BACKOFF_UNIT": "0.05",
                "PROVIDER_SLOT_POLL_SECONDS": "0.1",
                "HOOK_GENERATION_ENABLED": "true",
            }
        )
        for key in ("MODAL_SDXL_ENDPOINT", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"):
            env.pop(key, None)
        if self.auth_string:
            env["PREFECT_API_AUTH_STRING"] = self.auth_string
        return env

    def host_env(self, name: str, **overrides: str) -> dict[str, str]:
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        env = self.base_env()
        env.update(
            {
                "STUDIO_HOME": str(home / "studio"),
                "LOG_FILE": str(home / "app.log"),
                "PREFECT_HOME": str(home / "prefect"),
                "PREFECT_WORKER_QUERY_SECONDS": "2",
                "PREFECT_WORKER_PREFETCH_SECONDS": "2",
            }
        )
        env.update(overrides)
        return env

    def run(self, *command: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
        done = subprocess.run(
            list(command), cwd=ROOT, env=env or self.host_env("admin"), capture_output=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} exited {done.returncode}:\n"
                f"{done.stdout.decode(errors='replace')[-3000:]}\n"
                f"{done.stderr.decode(errors='replace')[-3000:]}"
            )
        return done.stdout.decode(errors="replace")

    # -- server -------------------------------------------------------------------------
    def start_server(self) -> None:
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}/api"
        env = self.host_env("server")
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.prefect_db
        env["PREFECT_UI_ENABLED"] = "false"
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - lives as long as the server
        self.server = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise AssertionError((self.root / "server.log").read_text()[-4000:])
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as answer,
            ):
                if answer.status == 200:
                    return
            time.sleep(0.5)
        raise AssertionError("the Prefect server did not answer /api/health in 180 s")

    def set_up(self) -> None:
        """What an operator does once per server: schema, avatar, pool, deployments,
        provider limits and automations."""
        admin = self.host_env("admin")
        self.run(
            str(BIN / "python"), "-c",
            "from studio.bootstrap import initialise, ensure_demo_avatar;"
            "initialise(); ensure_demo_avatar()",
            env=admin,
        )
        self.run(str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process", env=admin)
        self.run(str(BIN / "prefect"), "--no-prompt", "deploy", "--all", env=admin)
        self.run(str(BIN / "studio"), "limits", "apply", env=admin)
        self.run(str(BIN / "studio"), "automations", "apply", env=admin)

    # -- workers ------------------------------------------------------------------------
    def start_worker(self, name: str, limit: int | None = None, **overrides: str) -> None:
        """A process worker; `limit`: flow runs it takes at once (`--limit`)."""
        env = self.host_env(name, **overrides)
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115
        command = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--name", name,
                   "--type", "process"]
        if limit is not None:
            command += ["--limit", str(limit)]
        self.workers[name] = subprocess.Popen(
            command,
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def worker_running(self, name: str, flow_run_id: str) -> bool:
        """True when a flow-run process of `flow_run_id` is a child of worker `name`."""
        return any(
            _env_of(child).get("PREFECT__FLOW_RUN_ID") == flow_run_id
            for child in psutil.Process(self.workers[name].pid).children(recursive=True)
        )

    def kill_worker(self, name: str) -> list[int]:
        """kill -9 of the worker and of every process under it (its flow runs)."""
        worker = psutil.Process(self.workers[name].pid)
        victims = [*worker.children(recursive=True), worker]
        for process in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        self.workers[name].wait(timeout=10)
        return [p.pid for p in victims]

    # -- the API ------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[Any]:
        from prefect import get_client
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        updates: dict[Any, Any] = {PREFECT_API_URL: self.api_url}
        if self.auth_string:
            updates[PREFECT_API_AUTH_STRING] = self.auth_string
        with temporary_settings(updates):
            async with get_client() as client:
                yield client

    async def submit(self, client: Any, pieces: int, **parameters: Any) -> str:
        deployment = await client.read_deployment_by_name("content-batch/on-demand")
        run = await client.create_flow_run_from_deployment(
            deployment.id, parameters={"avatar_id": "demo", "num_pieces": pieces, **parameters}
        )
        return str(run.id)

    async def slots_held(self, client: Any) -> dict[str, int]:
        held = {}
        for name in ("comfyui", "replicate"):
            limit = await client.read_global_concurrency_limit_by_name(f"provider:{name}")
            held[name] = int(limit.active_slots)
        return held

    def stop(self) -> None:
        for process in [*self.workers.values(), self.server]:
            if process is None or process.poll() is not None:
                continue
            with contextlib.suppress(psutil.NoSuchProcess):
                for child in psutil.Process(process.pid).children(recursive=True):
                    child.send_signal(signal.SIGTERM)
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _env_of(process: psutil.Process) -> dict[str, str]:
    try:
        return process.environ()
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return {}


#: every fault test module's marks: slow, so only under `make faults` (STUDIO_FAULTS=1)
FAULT_SUITE = [
    pytest.mark.faults,
    pytest.mark.skipif(
        not os.environ.get("STUDIO_FAULTS"),
        reason="slow fault suite: make faults (STUDIO_FAULTS=1)",
    ),
]


async def wait_for(what: str, check, timeout: float, every: float = 0.5):  # type: ignore[no-untyped-def]
    """Poll the async `check` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextlib.contextmanager
def started_cluster(
    root: Path,
    postgres_url: str,
    s3: Any,
    *,
    cluster_class: type[Cluster] = Cluster,
    seed: int = 101,
    comfyui_latency: tuple[float, float] = (1.5, 2.5),
    replicate_latency: tuple[float, float] = (1.0, 2.0),
) -> Iterator[Any]:
    """The whole cluster, torn down afterwards (emulators, workers, server)."""
    from tests.emulators.base import Behaviour
    from tests.emulators.comfyui import ComfyUIEmulator
    from tests.emulators.replicate_api import ReplicateEmulator
    from tests.infra.postgres import create_database

    prefect_db = create_database(postgres_url).replace("+psycopg", "+asyncpg", 1)
    studio_db = create_database(postgres_url)
    comfyui = ComfyUIEmulator(Behaviour(seed=seed, latency=comfyui_latency))
    replicate = ReplicateEmulator(
        Behaviour(seed=seed + 1, latency=replicate_latency), token=REPLICATE_TOKEN
    )
    with comfyui, replicate:
        cluster = cluster_class(
            root=root, prefect_db=prefect_db, studio_db=studio_db, s3=s3,
            content_bucket=s3.new_bucket("content", public=True),
            staging_bucket=s3.new_bucket("staging"),
            comfyui=comfyui, replicate=replicate,
        )
        try:
            cluster.start_server()
            cluster.set_up()
            yield cluster
        finally:
            cluster.stop()


def studio_session(cluster: Cluster):  # type: ignore[no-untyped-def]
    """A session on the cluster's shared pipeline database."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    return Session(create_engine(cluster.studio_db))


def batch_facts(cluster: Cluster, batch_id: str) -> dict[str, Any]:
    """Rows, statuses, duplicates and objects of one batch, from the database and S3."""
    from sqlalchemy import func, select

    from studio.db.models import Batch, ContentPiece

    with studio_session(cluster) as session:
        rows = list(session.scalars(select(ContentPiece).where(ContentPiece.batch_id == batch_id)))
        batch = session.get(Batch, batch_id)
        total = session.scalar(
            select(func.count()).select_from(ContentPiece).where(ContentPiece.batch_id == batch_id)
        )
        facts: dict[str, Any] = {
            "status": batch.status if batch else None,
            "error": batch.error if batch else None,
            "resumes": list(batch.resumes or []) if batch else [],
            "rows": total,
            "pieces": len({r.id for r in rows}),
            "statuses": sorted(r.status for r in rows),
            "published": [r for r in rows if r.status == "published"],
            "providers": sorted(r.provider or "-" for r in rows),
        }
    s3 = cluster.s3.client()
    stored = [  # capa1 in the public content bucket, capa2/capa3 in the private one
        o
        for bucket in (cluster.content_bucket, cluster.staging_bucket)
        for o in s3.list_objects_v2(Bucket=bucket, Prefix="avatars/").get("Contents", [])
    ]
    facts["objects"] = [o["Key"] for o in stored if f"/batches/{batch_id}/" in o["Key"]]
    staged = s3.list_objects_v2(Bucket=cluster.staging_bucket, Prefix=f"staging/{batch_id}/")
    facts["staged"] = [o["Key"] for o in staged.get("Contents", [])]
    return facts


def generated_count(cluster: Cluster, batch_id: str) -> int:
    from sqlalchemy import func, select

    from studio.db.models import ContentPiece

    with studio_session(cluster) as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(ContentPiece)
                .where(ContentPiece.batch_id == batch_id, ContentPiece.status != "planned")
            )
            or 0
        )


def print_fault_row(scenario: str, figures: dict[str, Any]) -> None:
    """One line of the fault table (shown with pytest -s, and in the -rA summary)."""
    print(f"\n[FAULT {scenario}] " + " | ".join(f"{k}: {v}" for k, v in figures.items()))
