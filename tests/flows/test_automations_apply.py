"""`studio automations apply` on a real Prefect server (issue 16): it warns when the
automations notify nobody, refuses a block that does not exist, adds the automation
that starts crash recovery, and makes the deployments refuse unknown parameters; a run
that gets past the schema anyway ends Refused naming them."""

from __future__ import annotations

import subprocess
import sys
import uuid

import httpx
import pytest
from prefect.blocks.notifications import SlackWebhook
from prefect.client.orchestration import get_client
from prefect.events.actions import RunDeployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import get_current_settings
from prefect.states import Crashed
from typer.testing import CliRunner

from cli.app import app
from deployments.automations import DEFINITIONS, RECOVERY_DEPLOYMENT, apply_automations
from engine.strict_parameters import apply_strict_parameters
from flows.content_batch import content_batch
from flows.crash_recovery import crash_recovery
from tests.flows.test_run_logs import ROOT, _worker_env

runner = CliRunner()
RECOVERY = "studio: crashed batches resumed"


async def _clear_automations() -> None:
    names = {d.name for d in DEFINITIONS}
    async with get_client() as client:
        for automation in await client.read_automations():
            if automation.name in names:
                await client.delete_automation(automation.id)


async def _delete_deployment(name: str) -> None:
    async with get_client() as client:
        try:
            found = await client.read_deployment_by_name(name)
        except ObjectNotFound:  # absent already
            return
        await client.delete_deployment(found.id)


@pytest.fixture
async def bare_server():
    """No studio automations, and the deployments they run registered (crash-recovery;
    review, issue 19)."""
    from flows.review import review

    await _clear_automations()
    await (await review.ato_deployment(name="review")).aapply()
    deployment_id = await (await crash_recovery.ato_deployment(name="crash-recovery")).aapply()
    yield deployment_id
    await _clear_automations()


async def test_crash_automation_runs_the_crash_recovery_deployment(bare_server) -> None:
    async with get_client() as client:
        outcome = await apply_automations(client)
        found = {a.name: a for a in await client.read_automations()}
    assert outcome[RECOVERY] == "created"
    recovery = found[RECOVERY]
    assert recovery.trigger.expect == {"prefect.flow-run.Crashed", "prefect.flow-run.TimedOut"}
    assert recovery.trigger.match_related.model_dump() == {
        "prefect.resource.role": "flow",
        "prefect.resource.name": "content-batch",
    }
    runs = [a for a in recovery.actions if isinstance(a, RunDeployment)]
    assert [r.deployment_id for r in runs] == [bare_server]


async def test_crash_automation_is_skipped_without_its_deployment(bare_server) -> None:
    await _delete_deployment(RECOVERY_DEPLOYMENT)
    async with get_client() as client:
        outcome = await apply_automations(client)
        names = {a.name for a in await client.read_automations()}
    assert outcome[RECOVERY].startswith("skipped: no crash-recovery/crash-recovery deployment")
    assert RECOVERY not in names
    assert all(outcome[d.name] == "created" for d in DEFINITIONS if d.name != RECOVERY)


def test_apply_without_a_block_warns_in_one_line(bare_server) -> None:
    done = runner.invoke(app, ["automations", "apply"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    warnings = [line for line in done.output.splitlines() if "notify nobody" in line]
    assert len(warnings) == 1, done.output
    assert "--notify-block" in warnings[0]


def test_apply_with_a_missing_block_is_refused_and_changes_nothing(bare_server) -> None:
    missing = uuid.uuid4()
    done = runner.invoke(
        app, ["automations", "apply", "--notify-block", str(missing)], catch_exceptions=False
    )
    assert done.exit_code == 2, done.output
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "no such block" in lines[0], lines
    assert "Traceback" not in done.output
    listed = runner.invoke(app, ["automations", "apply"], catch_exceptions=False)
    assert listed.output.count(": created") == len(DEFINITIONS)  # the refusal made none


def test_apply_with_an_existing_block_does_not_warn(bare_server) -> None:
    block_id = SlackWebhook(url="http://127.0.0.1:9/hook").save(
        f"studio-h5-{uuid.uuid4().hex[:8]}"
    )
    done = runner.invoke(
        app, ["automations", "apply", "--notify-block", str(block_id)], catch_exceptions=False
    )
    assert done.exit_code == 0, done.output
    assert "notify nobody" not in done.output
    again = runner.invoke(app, ["automations", "apply"], catch_exceptions=False)
    assert "notify nobody" not in again.output  # the block in use is kept


async def _on_demand() -> str:
    deployment = await content_batch.ato_deployment(
        name="strict-params", parameters={"num_pieces": 2}
    )
    return str(await deployment.aapply())


def _create_run(deployment_id: str, body: dict) -> httpx.Response:
    url = get_current_settings().api.url
    return httpx.post(f"{url}/deployments/{deployment_id}/create_flow_run", json=body, timeout=30)


async def _run_count(deployment_id: str) -> int:
    url = get_current_settings().api.url
    counted = httpx.post(
        f"{url}/flow_runs/count",
        json={"deployments": {"id": {"any_": [deployment_id]}}},
        timeout=30,
    )
    counted.raise_for_status()
    return counted.json()


async def test_unknown_parameter_is_refused_at_creation_once_applied(studio_env) -> None:
    deployment_id = await _on_demand()
    before_apply = _create_run(deployment_id, {"parameters": {"avatar_id": "demo", "pieces": 5}})
    assert before_apply.status_code in (200, 201)  # Prefect's own schema lets it through (#6192)
    async with get_client() as client:
        outcome = await apply_strict_parameters(client)
        again = await apply_strict_parameters(client)
    assert outcome["content-batch/strict-params"] == "made strict"
    assert again["content-batch/strict-params"] == "already strict"
    runs = await _run_count(deployment_id)
    refused = _create_run(deployment_id, {"parameters": {"avatar_id": "demo", "pieces": 5}})
    assert refused.status_code == 409, refused.text
    assert "pieces" in refused.text
    assert await _run_count(deployment_id) == runs  # no run was created
    known = _create_run(deployment_id, {"parameters": {"avatar_id": "demo", "num_pieces": 3}})
    assert known.status_code in (200, 201), known.text


async def test_a_run_past_the_schema_ends_refused_naming_the_unknown_parameter(
    studio_env, demo_avatar
) -> None:
    deployment_id = await _on_demand()
    created = _create_run(
        deployment_id,
        {"parameters": {"avatar_id": "demo", "pieces": 5}, "enforce_parameter_schema": False},
    )
    assert created.status_code in (200, 201), created.text  # 200: Prefect's created-at race
    run_id = uuid.UUID(created.json()["id"])
    # as a process worker runs it: Prefect's engine fails before any flow code runs
    done = subprocess.run(
        [sys.executable, "-m", "prefect.engine"],
        cwd=ROOT,
        env={**_worker_env(), "PREFECT__FLOW_RUN_ID": str(run_id)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode != 0 and "SignatureMismatchError" in done.stderr
    async with get_client() as client:  # ... and the worker reports the run Crashed
        await client.set_flow_run_state(
            run_id, Crashed(message="Flow run infrastructure exited with status 1"), force=True
        )
    outcome = await crash_recovery()  # what the crash automation starts
    async with get_client() as client:
        run = await client.read_flow_run(run_id)
    assert run.state is not None and run.state.name == "Refused", run.state
    assert run.state.is_failed()
    assert "unknown parameter(s) 'pieces'" in (run.state.message or "")
    assert str(run_id) not in outcome  # nothing to resume
