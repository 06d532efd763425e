"""The fault cluster (tests/faults/worker_cluster.py) run the way the README says:
the Prefect server started by `studio server` (durable lease storage, the slot
reconcile beside it) on a fixed port, so it can be killed -9 and started again at the
same address with the same PREFECT_HOME; workers started with `--limit`.

Used by fault scenarios (a) and (c) and by bench/bench_workers.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.faults.worker_cluster import (
    BIN,
    POOL,
    ROOT,
    Cluster,
    free_port,
    started_cluster,
)

CAPS = {"comfyui": 10, "replicate": 5}


class StudioServerCluster(Cluster):
    port: int = 0

    def start_server(self) -> None:
        self.port = self.port or free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        env = self.host_env("server")  # the same PREFECT_HOME each start: the lease files
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.prefect_db
        env["PREFECT_UI_ENABLED"] = "false"
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - lives as long as the server
        self.server = subprocess.Popen(
            [str(BIN / "studio"), "server", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.wait_healthy(180)

    def wait_healthy(self, timeout: float) -> float:
        """Seconds until the server answers /api/health."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            assert self.server is not None
            if self.server.poll() is not None:
                raise AssertionError((self.root / "server.log").read_text()[-4000:])
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as answer,
            ):
                if answer.status == 200:
                    return time.monotonic() - started
            time.sleep(0.25)
        raise AssertionError(f"the Prefect server did not answer /api/health in {timeout:.0f} s")

    def kill_server(self) -> None:
        """kill -9 of `studio server` and the Prefect server under it."""
        assert self.server is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.server.pid, signal.SIGKILL)
        self.server.wait(timeout=10)

    def start_worker(self, name: str, limit: int | None = 3, **overrides: str) -> None:
        env = self.host_env(name, **overrides)
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115
        command = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--name", name,
                   "--type", "process"]
        if limit is not None:
            command += ["--limit", str(limit)]
        self.workers[name] = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def runs_of(self, name: str) -> set[str]:
        """Flow-run ids worker `name` ran (from its log): submitted and not aborted (two
        workers may both pick a run up; the server lets one of them start it)."""
        log = (self.root / f"{name}.log").read_text(errors="replace")

        def ids(marker: str) -> set[str]:
            return {
                line.split(marker, 1)[1].split("'", 1)[0]
                for line in log.splitlines() if marker in line
            }

        return ids(f"Worker '{name}' submitting flow run '") - ids(
            "Aborted submission of flow run '"
        )

    def lease_files(self) -> list[Path]:
        """Leases the server keeps on disk (filesystem lease storage) right now."""
        folder = self.root / "server" / "prefect" / "concurrency_leases"
        return sorted(folder.glob("*.json")) if folder.exists() else []


def studio_cluster(
    root: Path, postgres_url: str, s3: Any, *, comfyui_latency=(1.5, 2.5),
    replicate_latency=(1.0, 2.0),
) -> contextlib.AbstractContextManager[StudioServerCluster]:
    """The cluster of tests/faults/worker_cluster.py, its server started by `studio server`."""
    return started_cluster(
        root, postgres_url, s3, cluster_class=StudioServerCluster, seed=201,
        comfyui_latency=comfyui_latency, replicate_latency=replicate_latency,
    )


def jobs_billed(cluster: Cluster) -> int:
    """Provider jobs billed (ComfyUI prompts run + Replicate predictions)."""
    return int(cluster.comfyui.billed_jobs) + int(cluster.replicate.billed_jobs)


def peaks(cluster: Cluster) -> str:
    return (f"comfyui {cluster.comfyui.counters.peak}/{CAPS['comfyui']}, "
            f"replicate {cluster.replicate.counters.peak}/{CAPS['replicate']}")
