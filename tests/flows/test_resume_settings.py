"""What a resume runs with (flows/resume_settings.py), on a real Prefect API: crash
recovery creates it with the job variables of the batch's original run, whichever of
the batch's runs crashed last. tests/prefect_server/test_resume_job_variables.py runs
the same through a real worker, killed -9.
"""

from __future__ import annotations

import uuid

import pytest
from prefect import get_client
from prefect.states import Crashed

from flows.crash_recovery import recover_batch
from studio.db.engine import session_scope
from studio.db.models import Batch

pytestmark = pytest.mark.usefixtures("prefect_api")

JOB_VARIABLES = {"env": {"REPLICATE_API_TOKEN": "r8_in_job_variables", "LOG_LEVEL": "INFO"}}


@pytest.fixture
async def deployment_id(prefect_api, studio_env):
    from flows.content_batch import content_batch

    deployment = await content_batch.ato_deployment(name=f"resume-{uuid.uuid4().hex[:6]}")
    return await deployment.apply()


async def test_every_resume_carries_the_original_runs_job_variables(deployment_id) -> None:
    from studio.bootstrap import ensure_demo_avatar

    avatar_id = ensure_demo_avatar()
    async with get_client() as client:
        original = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"avatar_id": "demo", "num_pieces": 3},
            job_variables=JOB_VARIABLES,
        )
        batch_id = str(original.id)  # a batch's id is its first run's id
        with session_scope() as session:
            session.add(Batch(id=batch_id, avatar_id=avatar_id, status="running", requested=3,
                              config={"avatar_id": "demo", "num_pieces": 3}))
        await client.set_flow_run_state(original.id, Crashed(), force=True)
        ended = [await client.read_flow_run(original.id)]

        first = await recover_batch(client, batch_id, ended, 3, "content-batch/on-demand")
        resume = await client.read_flow_run(uuid.UUID(first.rsplit(" ", 1)[-1]))
        assert resume.job_variables == JOB_VARIABLES
        assert resume.deployment_id == original.deployment_id

        # the resume crashed too: the next one still carries the original's
        await client.set_flow_run_state(resume.id, Crashed(), force=True)
        second = await recover_batch(client, batch_id, ended, 3, "content-batch/on-demand")
        again = await client.read_flow_run(uuid.UUID(second.rsplit(" ", 1)[-1]))
        assert again.id != resume.id and again.job_variables == JOB_VARIABLES
