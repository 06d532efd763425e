"""The spec's alert thresholds, and their automations kept by name on a real Prefect server
(`studio automations apply` never duplicates; it exits 1 naming the URL when no server answers)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from prefect.blocks.notifications import SlackWebhook
from prefect.client.orchestration import get_client
from prefect.events.actions import SendNotification
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings
from typer.testing import CliRunner

from cli.app import app
from deployments.automations import ALERTS, DEFINITIONS, apply_automations
from deployments.serve import build_deployments
from flows.crash_recovery import crash_recovery
from studio.alerts import evaluate
from studio.types import BatchResult

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def result(**overrides) -> BatchResult:
    values = dict(
        batch_id="b",
        avatar_id="a",
        avatar_name="n",
        status="completed",
        requested=50,
        published=48,
        rejected=2,
        failed=0,
        pending_review=0,
        cost_usd=0.7,
        total_seconds=300.0,
        step_seconds={"database_save": 0.2},
        cost_breakdown={},
        stand_ins=[],
        pieces=[],
    )
    values.update(overrides)
    return BatchResult(**values)


def test_healthy_batch_raises_no_alert() -> None:
    assert evaluate(result(), hook_failures=2, cache_hit_percent=96.0) == []


def test_each_threshold() -> None:
    names = {
        a.name
        for a in evaluate(
            result(
                total_seconds=601,
                failed=11,
                rejected=10,
                published=29,
                step_seconds={"database_save": 5.5},
            ),
            hook_failures=5,
            cache_hit_percent=40.0,
        )
    }
    assert names == set(ALERTS)


@pytest.fixture
async def no_studio_automations():
    """Start from a server without the studio automations (the harness is per session),
    with the deployments they run: crash-recovery, and review (issue 19's held pieces)."""
    from flows.review import review

    names = [d.name for d in DEFINITIONS]
    await (await crash_recovery.ato_deployment(name="crash-recovery")).aapply()
    await (await review.ato_deployment(name="review")).aapply()
    async with get_client() as client:
        for automation in await client.read_automations():
            if automation.name in names:
                await client.delete_automation(automation.id)
    yield names


async def studio_automations(names: list[str]) -> list:
    async with get_client() as client:
        return [a for a in await client.read_automations() if a.name in names]


async def test_apply_twice_creates_each_automation_once(no_studio_automations) -> None:
    async with get_client() as client:
        first = await apply_automations(client)
        second = await apply_automations(client)
    assert set(first.values()) == {"created"}
    assert set(second.values()) == {"unchanged"}
    found = await studio_automations(no_studio_automations)
    assert sorted(a.name for a in found) == sorted(no_studio_automations)
    assert len(found) == len(DEFINITIONS)
    assert "studio: content batch failed" in {a.name for a in found}


async def test_apply_removes_duplicates_older_versions_made(no_studio_automations) -> None:
    definition = DEFINITIONS[0]
    async with get_client() as client:
        for _ in range(2):  # what the old create-only script left after two runs
            await client.create_automation(definition.build(None))
        outcome = await apply_automations(client)
    assert outcome[definition.name] == "unchanged, 1 duplicate(s) removed"
    found = await studio_automations(no_studio_automations)
    assert [a.name for a in found].count(definition.name) == 1
    assert len(found) == len(DEFINITIONS)


def test_apply_from_other_processes_reads_as_unchanged(no_studio_automations) -> None:
    """Each process dumps a trigger's sets (`expect`...) in its own hash order; the
    second apply, from another process, must still find nothing to change."""
    env = {**os.environ, "PREFECT_API_URL": get_current_settings().api.url}
    outputs = []
    for seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-m", "cli.automations"],
            env={**env, "PYTHONHASHSEED": seed}, cwd=ROOT, capture_output=True, text=True,
            timeout=120, check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        outputs.append(done.stdout)
    assert outputs[0].count(": created") == len(DEFINITIONS)
    assert outputs[1].count(": unchanged") == len(DEFINITIONS), outputs[1]


async def test_changed_definition_is_updated_in_place(no_studio_automations) -> None:
    definition = DEFINITIONS[-1]
    async with get_client() as client:
        await apply_automations(client)
        before = {a.name: a.id for a in await studio_automations(no_studio_automations)}
        changed = replace(definition, description="a new wording")
        outcome = await apply_automations(client, definitions=[changed])
    assert outcome == {definition.name: "updated"}
    after = {a.name: a for a in await studio_automations(no_studio_automations)}
    assert after[definition.name].id == before[definition.name]
    assert after[definition.name].description == "a new wording"


async def test_notify_block_is_kept_when_apply_runs_without_it(no_studio_automations) -> None:
    block_id = await SlackWebhook(url="http://127.0.0.1:9/hook").save(
        f"studio-alerts-{uuid.uuid4().hex[:8]}"
    )
    async with get_client() as client:
        await apply_automations(client)
        with_block = await apply_automations(client, block_id)
        again = await apply_automations(client)
    assert set(with_block.values()) == {"updated"}
    assert set(again.values()) == {"unchanged"}
    for automation in await studio_automations(no_studio_automations):
        notify = [a for a in automation.actions if isinstance(a, SendNotification)]
        assert [n.block_document_id for n in notify] == [block_id]
        assert notify[0].subject.startswith("[studio] ")


def test_cli_apply_twice_then_unreachable_server(no_studio_automations) -> None:
    first = runner.invoke(app, ["automations", "apply"], catch_exceptions=False)
    second = runner.invoke(app, ["automations", "apply"], catch_exceptions=False)
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert first.output.count(": created") == len(DEFINITIONS)
    assert second.output.count(": unchanged") == len(DEFINITIONS)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
    with temporary_settings(updates={PREFECT_API_URL: closed}):
        down = runner.invoke(app, ["automations", "apply"], catch_exceptions=False)
    assert down.exit_code == 1
    assert closed in down.output and "Traceback" not in down.output


def test_serve_builds_every_deployment() -> None:
    names = {d.name for d in build_deployments()}
    assert names == {
        "on-demand", "health", "daily", "weekly", "monthly", "storage-sync", "review"
    }
