"""The crash-recovery flow on a real Prefect API: crashed and timed-out batches are resumed
through their deployment, at most N times, then failed with the reason; never a loop.

The runs it starts are not executed here (no worker): the test plays their endings
(Crashed) with forced state changes, as the zombie-run automation does for a dead
process. tests/faults/test_worker_kill.py runs the whole loop with real workers.
"""

from __future__ import annotations

import uuid

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.states import Crashed, State

from studio.db.engine import session_scope
from studio.db.models import Batch

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
async def deployment_id(prefect_api, studio_env):
    from flows.content_batch import content_batch

    deployment = await content_batch.ato_deployment(name=f"on-demand-{uuid.uuid4().hex[:6]}")
    return await deployment.apply()


def _batch(status: str = "running") -> str:
    from studio.bootstrap import ensure_demo_avatar

    avatar_id = ensure_demo_avatar()
    batch_id = str(uuid.uuid4())
    with session_scope() as session:
        session.add(
            Batch(
                id=batch_id, avatar_id=avatar_id, status=status, requested=3,
                config={"avatar_id": "demo", "num_pieces": 3},
            )
        )
    return batch_id


def _row(batch_id: str) -> Batch:
    with session_scope() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        return batch


async def _ended_run(deployment_id, batch_id: str, state: State) -> str:  # type: ignore[no-untyped-def]
    async with get_client() as client:
        run = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"avatar_id": "demo", "num_pieces": 3, "batch_id": batch_id}
        )
        await client.set_flow_run_state(run.id, state, force=True)
        return str(run.id)


async def _resumes(batch_id: str):  # type: ignore[no-untyped-def]
    async with get_client() as client:
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"auto-resume:{batch_id}"]))
        )


async def test_one_truth_crashed_batch_is_resumed_then_given_up_after_n_attempts(
    deployment_id,
) -> None:
    from flows.crash_recovery import crash_recovery

    batch_id = _batch()
    original = await _ended_run(deployment_id, batch_id, Crashed(message="heartbeats stopped"))

    outcome = await crash_recovery(max_attempts=2)
    assert outcome[batch_id].startswith("resumed (attempt 1/2)")
    assert _row(batch_id).status == "crashed"  # the row says what Prefect says
    [first] = await _resumes(batch_id)
    assert set(first.tags) >= {"auto-resume", f"auto-resume:{batch_id}", f"resumes:{original}"}
    assert first.parameters["resume_batch_id"] == batch_id
    assert first.parameters["avatar_id"] == "demo"
    assert first.idempotency_key == f"auto-resume:{batch_id}:1"
    assert first.deployment_id == deployment_id
    assert "attempt-1" in first.name

    # its resume has not ended yet: nothing more is started
    assert (await crash_recovery(max_attempts=2))[batch_id] == "a resume is on its way"
    assert len(await _resumes(batch_id)) == 1

    async with get_client() as client:  # the resume itself dies
        await client.set_flow_run_state(first.id, Crashed(message="killed"), force=True)
    outcome = await crash_recovery(max_attempts=2)
    assert outcome[batch_id].startswith("resumed (attempt 2/2)")
    runs = await _resumes(batch_id)
    assert len(runs) == 2
    second = next(r for r in runs if r.id != first.id)
    assert f"resumes:{first.id}" in second.tags
    assert second.idempotency_key == f"auto-resume:{batch_id}:2"

    async with get_client() as client:
        await client.set_flow_run_state(second.id, Crashed(message="killed again"), force=True)
    outcome = await crash_recovery(max_attempts=2)
    assert outcome[batch_id].startswith("gave up: automatic resume gave up after 2 attempt(s)")
    row = _row(batch_id)
    assert row.status == "failed"
    assert "gave up after 2 attempt(s)" in (row.error or "") and str(second.id) in row.error

    # never a loop: a failed batch is not resumed again
    assert (await crash_recovery(max_attempts=2))[batch_id] == "finished"
    assert len(await _resumes(batch_id)) == 2


async def test_one_truth_timed_out_batch_is_resumed_and_finished_ones_are_left(
    deployment_id,
) -> None:
    from flows.crash_recovery import crash_recovery

    timed_out = _batch()
    await _ended_run(
        deployment_id, timed_out, State(type="FAILED", name="TimedOut", message="600 s")
    )
    done = _batch(status="completed")
    await _ended_run(deployment_id, done, Crashed(message="crashed after finishing"))

    outcome = await crash_recovery(max_attempts=3)
    assert outcome[timed_out].startswith("resumed (attempt 1/3)")
    assert _row(timed_out).status == "timed_out"
    assert outcome[done] == "finished"
    assert await _resumes(done) == []
    assert _row(done).status == "completed"


async def test_one_truth_two_recoveries_at_once_start_one_resume(deployment_id) -> None:
    import asyncio

    from flows.crash_recovery import recover_batch

    batch_id = _batch()
    original = await _ended_run(deployment_id, batch_id, Crashed())
    async with get_client() as client:
        run = await client.read_flow_run(uuid.UUID(original))
        await asyncio.gather(
            recover_batch(client, batch_id, [run], 3, "content-batch/on-demand"),
            recover_batch(client, batch_id, [run], 3, "content-batch/on-demand"),
        )
    assert len(await _resumes(batch_id)) == 1  # the attempt's idempotency key
