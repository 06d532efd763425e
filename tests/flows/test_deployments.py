"""`prefect deploy --all` registers every deployment of prefect.yaml on a real server,
and the scheduled fan-out makes one batch per due avatar."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.settings import get_current_settings
from sqlalchemy import func, select

from flows.scheduled import scheduled_batches
from studio.avatars import add_avatar
from studio.db.engine import session_scope
from studio.db.models import Batch

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def run_prefect(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_API_URL": get_current_settings().api.url}
    return subprocess.run(
        [PREFECT, "--no-prompt", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def test_deploy_all_registers_schedules() -> None:
    created = run_prefect("work-pool", "create", "studio-pool", "--type", "process")
    assert created.returncode == 0 or "already exists" in created.stdout, created.stdout
    deployed = run_prefect("deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    async with get_client() as client:
        deployments = {d.name: d for d in await client.read_deployments()}
    assert {"on-demand", "daily", "weekly", "monthly", "health", "storage-sync"} <= set(deployments)
    assert deployments["daily"].parameters == {"cadence": "daily", "num_pieces": 50}
    assert deployments["weekly"].parameters["num_pieces"] == 20
    assert deployments["monthly"].parameters["num_pieces"] == 100
    assert deployments["on-demand"].parameters["num_pieces"] == 10
    assert deployments["daily"].schedules and deployments["daily"].schedules[0].active
    assert not deployments["on-demand"].schedules


async def test_scheduled_fan_out_runs_due_avatars_only(studio_env) -> None:
    with session_scope() as session:
        add_avatar(session, "weekly-one", "travel", "https://w.example/a.safetensors", "weekly")
        add_avatar(session, "weekly-two", "food", "https://w.example/b.safetensors", "weekly")
        add_avatar(session, "weekly-untrained", "food", None, "weekly")
        add_avatar(session, "daily-one", "fitness", "https://w.example/c.safetensors", "daily")
        add_avatar(
            session,
            "weekly-paused",
            "food",
            "https://w.example/d.safetensors",
            "weekly",
            active=False,
        )
    summary = await scheduled_batches(cadence="weekly", num_pieces=3)
    assert set(summary) == {"weekly-one", "weekly-two"}
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 2
