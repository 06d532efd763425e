"""The spec's log lines reach a worker-run batch's Prefect logs.

The run is executed the way a process worker executes it: `python -m prefect.engine`
in a fresh interpreter with PREFECT__FLOW_RUN_ID, and an environment without
PREFECT_LOGGING_EXTRA_LOGGERS (Prefect sets up logging before the project is
imported there). The logs are then read back through the Prefect API.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.sorting import LogSort
from prefect.settings import get_current_settings

from flows.content_batch import content_batch

ROOT = Path(__file__).resolve().parents[2]


def _worker_env() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PREFECT_LOGGING_EXTRA_LOGGERS", "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"}
    }
    env["PREFECT_API_URL"] = str(get_current_settings().api.url)
    env["PYTHONPATH"] = str(ROOT)
    return env


async def _messages(run_ids: list) -> list[str]:
    async with get_client() as client:
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_ids)),
            limit=200,
            sort=LogSort.TIMESTAMP_ASC,
        )
    return [log.message for log in logs]



def run_as_a_worker_does(run_id: object, env: dict[str, str] | None = None) -> None:
    """The flow run in a fresh interpreter, `python -m prefect.engine`, as a process
    worker starts it (without PREFECT_LOGGING_EXTRA_LOGGERS); it must exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", "prefect.engine"],
        cwd=ROOT,
        env={**(env or _worker_env()), "PREFECT__FLOW_RUN_ID": str(run_id)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


async def test_worker_run_batch_sends_the_spec_lines_to_its_run_logs(
    studio_env, demo_avatar
) -> None:
    deployment = await content_batch.ato_deployment(name="run-logs")
    deployment_id = await deployment.aapply()
    async with get_client() as client:
        run = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"avatar_id": "demo", "num_pieces": 3}
        )
    env = _worker_env()
    assert "PREFECT_LOGGING_EXTRA_LOGGERS" not in env
    run_as_a_worker_does(run.id, env)
    async with get_client() as client:
        finished = await client.read_flow_run(run.id)
        chunks = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])
            )
        )
    assert finished.state is not None and finished.state.is_completed()

    batch_lines = await _messages([run.id])
    starts = [i for i, m in enumerate(batch_lines) if m.startswith("[BATCH START] Avatar: ")]
    assert len(starts) == 1, batch_lines
    for n in range(1, 8):
        assert any(m.startswith(f"[STEP {n}/7] ") for m in batch_lines), (n, batch_lines)
    assert sum(m.startswith("[BATCH COMPLETE] Avatar: ") for m in batch_lines) == 1
    assert any(m.startswith("Safety check summary") for m in batch_lines), batch_lines
    assert any(m.startswith("Hook generation summary") for m in batch_lines), batch_lines
    # provider attempts: in the batch's run (images start before their chunk registers)
    # or in their chunk's; a subflow's records reach the subflow's logs
    assert chunks, "no image-chunk subflow"
    lines = batch_lines + await _messages([c.id for c in chunks])
    assert sum(m.startswith("provider_attempt ") for m in lines) >= 3, lines
    # app.log keeps the spec's format
    text = Path(studio_env.log_file).read_text()
    assert " INFO studio.batch [STEP 1/7] Template Selection | " in text
