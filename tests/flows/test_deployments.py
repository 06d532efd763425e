"""`prefect deploy --all` registers every deployment of prefect.yaml on a real server,
and the scheduled fan-out starts one `content-batch` deployment run per due avatar (or,
with no such deployment, runs them in-process and says so). tests/prefect_server/ runs
the same fan-out under a real worker."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterParentFlowRunId,
)
from prefect.exceptions import ObjectNotFound
from prefect.settings import get_current_settings
from sqlalchemy import func, select

from flows.content_batch import content_batch
from flows.scheduled import BATCH_DEPLOYMENT, due_avatars, scheduled_batches, submit_batches
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


def add_weekly_avatars() -> None:
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


async def batch_deployment_id() -> UUID:
    """`content-batch/on-demand` registered on the test server (no worker takes its runs)."""
    deployment = await content_batch.ato_deployment(
        name="on-demand", parameters={"avatar_id": "demo", "num_pieces": 10}
    )
    return await deployment.apply()


async def test_fan_out_starts_one_deployment_run_per_due_avatar(studio_env) -> None:
    add_weekly_avatars()
    deployment_id = await batch_deployment_id()
    parent = await scheduled_batches(cadence="weekly", num_pieces=3, return_state=True)
    assert parent.is_completed(), parent.message
    summary = await parent.result()
    assert set(summary) == {"weekly-one", "weekly-two"}
    async with get_client() as client:
        children = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(
                    any_=[parent.state_details.flow_run_id]
                )
            )
        )
    by_name = {run.name: run for run in children}
    assert set(by_name) == {"content-batch-weekly-one-3", "content-batch-weekly-two-3"}
    for name, run in by_name.items():
        assert run.deployment_id == deployment_id  # a worker of the pool takes it
        assert run.state.is_scheduled()  # submitted, not awaited: nothing ran here
        assert run.parameters["num_pieces"] == 3 and run.parameters["hook_mode"] == "auto"
        assert run.idempotency_key.startswith("scheduled-batches:weekly:")
        assert {"scheduled", "weekly"} <= set(run.tags)
        avatar = name.removeprefix("content-batch-").removesuffix("-3")
        assert avatar in summary and run.parameters["avatar_id"] == avatar
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 0


async def test_retried_fan_out_of_a_slot_starts_no_batch_twice(studio_env) -> None:
    add_weekly_avatars()
    await batch_deployment_id()
    ready = due_avatars("weekly")
    params = {"num_pieces": 2, "platform": "tiktok", "hook_mode": "auto"}
    slot = "2026-12-07T06:00:00+00:00"
    first = await submit_batches("weekly", slot, ready, params)
    again = await submit_batches("weekly", slot, ready, params)
    next_week = await submit_batches("weekly", "2026-12-14T06:00:00+00:00", ready, params)
    assert first == again
    assert set(first.values()).isdisjoint(next_week.values())
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=["content-batch-weekly-one-2"])
            )
        )
    assert len(runs) == 2  # one per slot


async def test_fan_out_without_deployment_runs_batches_here_with_a_warning(
    studio_env, caplog
) -> None:
    async with get_client() as client:
        try:
            gone = await client.read_deployment_by_name(BATCH_DEPLOYMENT)
            await client.delete_deployment(gone.id)
        except ObjectNotFound:
            pass
    add_weekly_avatars()
    with caplog.at_level(logging.WARNING, logger="studio.batch"):
        summary = await scheduled_batches(cadence="weekly", num_pieces=3)
    assert set(summary) == {"weekly-one", "weekly-two"}
    assert f"No {BATCH_DEPLOYMENT} deployment" in caplog.text
    assert "prefect deploy --all" in caplog.text
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 2
    async with get_client() as client:
        names = {r.name for r in await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                name=FlowRunFilterName(any_=["content-batch-weekly-one-3"])
            )
        )}
    assert names == {"content-batch-weekly-one-3"}  # named after the avatar, not its id
