"""`studio batch resume` of a batch a deployment ran: resumed on that deployment.

WHY: a batch created from a deployment may have had its provider endpoints and keys in
the run's job variables; resumed in the operator's shell it would run with the shell's
settings (often none: previews) instead. So when a Prefect API is configured and the
batch's original run (the flow run whose id is the batch id) came from a deployment,
the resume is a new run of that deployment with `resume_batch_id` and the original
run's job variables (flows/resume_settings.py), which any worker picks up. A batch run
locally (`studio batch run`, no deployment) is resumed in this process as before.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

#: (run id, deployment name, who started it if it was already on its way, else None)
ResumeRun = tuple[str, str, str | None]

#: the tag of a resume an operator asked for (crash recovery's are `auto-resume`)
OPERATOR_RESUME_TAG = "operator-resume"


def configured_api() -> str | None:
    """The Prefect API the operator configured (environment or profile), if any."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


async def _resume_on_deployment(batch_id: str, config: dict[str, Any]) -> ResumeRun | None:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    from flows.batch_state_hooks import RESUMES_TAG_PREFIX
    from flows.resume_runs import resumes_on_their_way, who_resumes
    from flows.resume_settings import original_job_variables
    from studio.request import resume_parameters

    async with get_client() as client:
        try:
            original = await client.read_flow_run(UUID(batch_id))
        except ObjectNotFound:
            return None  # not a run of this API (a local batch): resumed here
        if original.deployment_id is None:
            return None
        deployment = await client.read_deployment(original.deployment_id)
        if on_its_way := await resumes_on_their_way(client, batch_id):
            run = on_its_way[0]  # crash recovery (or someone) got there first: that one
            return str(run.id), deployment.name, who_resumes(run)
        run = await client.create_flow_run_from_deployment(
            original.deployment_id,
            parameters=resume_parameters(batch_id, config),
            name=f"resume-{batch_id[:8]}-by-operator",
            tags=[OPERATOR_RESUME_TAG, f"{RESUMES_TAG_PREFIX}{original.id}"],
            job_variables=await original_job_variables(client, batch_id, [original]),
        )
        return str(run.id), deployment.name, None


def resume_on_deployment(batch_id: str, config: dict[str, Any]) -> ResumeRun | None:
    """(run id, deployment name, None) of the resume created on the batch's deployment;
    (run id, deployment name, who) of a resume already on its way, which is left to
    finish the batch; None when the batch is resumed in this process (no API
    configured, a local batch)."""
    if configured_api() is None:
        return None
    return asyncio.run(_resume_on_deployment(batch_id, config))
