"""`studio batch submit` and `studio batch status` against a real Prefect API.

Submit refuses bad options with exit 2 before any API call (no run is created), exits 1
naming the URL when no server answers or the deployment is missing, and otherwise
creates one run of `content-batch/on-demand` (none more for a repeated idempotency key).
Status reads the run's state and the batch's rows.
"""

from __future__ import annotations

import asyncio
import re
import socket
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from typer.testing import CliRunner

from cli.app import app
from deployments.api import ui_url
from flows.batch_runs import BATCH_DEPLOYMENT
from flows.content_batch import content_batch

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


# the CLI runs its own event loop (asyncio.run), so these tests are plain functions


@pytest.fixture
def batch_deployment() -> uuid.UUID:
    async def apply() -> uuid.UUID:
        deployment = await content_batch.ato_deployment(
            name="on-demand", parameters={"avatar_id": "demo", "num_pieces": 10}
        )
        return await deployment.apply()

    return asyncio.run(apply())


def runs_of(deployment_id: uuid.UUID) -> list:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )


def closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/api"


@pytest.mark.parametrize(
    "args, field",
    [
        (["--avatar", "ghost"], "avatar_id"),
        (["--avatar", "demo", "--pieces", "0"], "num_pieces"),
        (["--avatar", "demo", "--pieces", "501"], "num_pieces"),
        (["--avatar", "demo", "--tiers", "0.5,0.3,0.1"], "tier_distribution"),
        (["--avatar", "demo", "--platform", "myspace"], "platform"),
        (["--avatar", "demo", "--pieces", "2", "--prompt", "one"], "custom_prompts"),
        (["--avatar", "demo", "--hook-mode", "fast"], "hook_mode"),
    ],
)
def test_bad_options_exit_2_and_create_no_run(
    studio_env, demo_avatar, batch_deployment, args, field
) -> None:
    before = len(runs_of(batch_deployment))
    with temporary_settings(updates={PREFECT_API_URL: closed_url()}):
        # refused before any API call: an unreachable server is never noticed
        result = invoke("batch", "submit", *args)
    assert result.exit_code == 2, result.output
    assert field in result.output and "Traceback" not in result.output
    result = invoke("batch", "submit", *args)
    assert result.exit_code == 2, result.output
    assert len(runs_of(batch_deployment)) == before


def test_unreachable_server_exits_1_naming_the_url(studio_env, demo_avatar) -> None:
    url = closed_url()
    with temporary_settings(updates={PREFECT_API_URL: url}):
        result = invoke("batch", "submit", "--avatar", "demo", "--pieces", "2")
    assert result.exit_code == 1
    assert url in result.output and "Traceback" not in result.output


def test_missing_deployment_exits_1_saying_how_to_deploy(studio_env, demo_avatar) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.delete_deployment(client.read_deployment_by_name(BATCH_DEPLOYMENT).id)
        except ObjectNotFound:
            pass
    result = invoke("batch", "submit", "--avatar", "demo", "--pieces", "2")
    assert result.exit_code == 1
    assert BATCH_DEPLOYMENT in result.output and "prefect deploy --all" in result.output


def test_submit_creates_one_run_and_status_reads_it(
    studio_env, demo_avatar, batch_deployment
) -> None:
    key = f"test-{uuid.uuid4().hex[:8]}"
    args = ["--avatar", demo_avatar, "--pieces", "3", "--platform", "tiktok",
            "--tiers", "0.5,0.5,0", "--no-hooks", "--idempotency-key", key]
    first = invoke("batch", "submit", *args)
    assert first.exit_code == 0, first.output
    run_id = re.search(r"run ([0-9a-f-]{36}) \(content-batch-demo-3\)", first.output)[1]
    assert f"{ui_url()}/runs/flow-run/{run_id}" in first.output.replace("\n", "")
    again = invoke("batch", "submit", *args)
    assert again.exit_code == 0 and "already submitted" in again.output
    assert run_id in again.output
    runs = runs_of(batch_deployment)
    assert [str(r.id) for r in runs if r.idempotency_key == key] == [run_id]
    run = next(r for r in runs if str(r.id) == run_id)
    assert run.name == "content-batch-demo-3" and run.state.is_scheduled()
    assert run.parameters["avatar_id"] == "demo" and run.parameters["platform"] == "tiktok"
    assert run.parameters["tier_distribution"] == {"capa1": 0.5, "capa2": 0.5, "capa3": 0.0}
    assert run.parameters["include_hooks"] is False and "custom_prompts" not in run.parameters

    status = invoke("batch", "status", run_id)
    assert status.exit_code == 0, status.output
    assert "state: Scheduled" in status.output
    assert "no batch row yet" in status.output and "step: not started" in status.output


def test_status_of_a_finished_batch_by_batch_id(studio_env, demo_avatar) -> None:
    ran = invoke("batch", "run", "--avatar", "demo", "--pieces", "2")
    assert ran.exit_code == 0, ran.output
    batch_id = re.search(r"batch ([0-9a-f-]{36})", ran.output)[1]
    status = invoke("batch", "status", batch_id)
    assert status.exit_code == 0, status.output
    assert f"run: content-batch-demo-2 ({batch_id})" in status.output  # batch id = run id
    assert "state: Completed" in status.output
    assert "(completed)" in status.output and "published 2" in status.output
    assert "pieces: 2 requested" in status.output


def test_status_of_an_unknown_id_exits_2(studio_env) -> None:
    result = invoke("batch", "status", str(uuid.uuid4()))
    assert result.exit_code == 2 and "no flow run or batch" in result.output


def test_an_overlong_prompt_is_refused_before_the_api(studio_env, demo_avatar, batch_deployment):
    """The CLI checks what the deployment's schema says (a prompt over 1000 characters)
    itself: exit 2 naming the field, nothing sent, no run."""
    before = len(runs_of(batch_deployment))
    result = invoke("batch", "submit", "--avatar", "demo", "--pieces", "1", "--prompt", "x" * 1001)
    assert result.exit_code == 2, result.output
    assert "custom_prompts" in result.output and "Traceback" not in result.output
    assert len(runs_of(batch_deployment)) == before


def test_parameters_the_server_schema_refuses_exit_2(studio_env, demo_avatar, batch_deployment):
    """Parameters the server's schema refuses (sent as they are, past the CLI's own checks,
    as an older CLI against a newer deployment would) come back as its 409: reported as a
    refusal, exit 2, no run created."""
    import typer

    from cli.submit import _call_server, _submit

    before = len(runs_of(batch_deployment))
    parameters = {"avatar_id": "demo", "num_pieces": 1, "custom_prompts": ["x" * 1001]}
    with pytest.raises(typer.Exit) as exited:
        _call_server(_submit(parameters, "content-batch-demo-1", None))
    assert exited.value.exit_code == 2
    assert len(runs_of(batch_deployment)) == before
