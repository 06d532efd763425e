"""The scheduled fan-out's own lines reach its Prefect run logs and app.log (issue 16).

The fan-out runs the way a process worker runs it: `python -m prefect.engine` in a
fresh interpreter, without PREFECT_LOGGING_EXTRA_LOGGERS; its logs are read back
through the Prefect API.
"""

from __future__ import annotations

from pathlib import Path

from prefect.client.orchestration import get_client

from flows.content_batch import content_batch
from flows.scheduled import scheduled_batches
from studio.avatars import add_avatar
from studio.db.engine import session_scope
from tests.flows.test_run_logs import _messages, run_as_a_worker_does


async def test_worker_run_fan_out_logs_avatars_due_and_each_submission(studio_env) -> None:
    with session_scope() as session:
        add_avatar(session, "monthly-logs", "travel", "https://w.example/m.safetensors", "monthly")
    batches = await content_batch.ato_deployment(
        name="on-demand", parameters={"avatar_id": "demo", "num_pieces": 10}
    )
    batches_id = await batches.aapply()  # no worker takes the submitted batch: it stays Scheduled
    try:
        await _fan_out_logs_its_lines(studio_env)
    finally:
        # the test API is shared: a fan-out of a later test must not find this deployment
        # and submit to it instead of running its batches in-process
        async with get_client() as client:
            await client.delete_deployment(batches_id)


async def _fan_out_logs_its_lines(studio_env) -> None:  # type: ignore[no-untyped-def]
    fan_out = await scheduled_batches.ato_deployment(name="fan-out-logs")
    fan_out_id = await fan_out.aapply()
    async with get_client() as client:
        run = await client.create_flow_run_from_deployment(
            fan_out_id, parameters={"cadence": "monthly", "num_pieces": 1}
        )
    run_as_a_worker_does(run.id)
    async with get_client() as client:
        finished = await client.read_flow_run(run.id)
    assert finished.state is not None and finished.state.is_completed(), finished.state

    lines = await _messages([run.id])
    assert "Scheduled monthly batches: 1 avatars due" in lines, lines
    assert any(m.startswith("Batch submitted | Avatar: monthly-logs | Run: ") for m in lines)
    text = Path(studio_env.log_file).read_text()
    assert "INFO studio.batch Scheduled monthly batches: 1 avatars due" in text
    assert "INFO studio.batch Batch submitted | Avatar: monthly-logs" in text
