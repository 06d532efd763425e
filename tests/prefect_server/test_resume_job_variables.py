"""A resume runs with the original run's job variables (issue 16, flows/resume_settings.py).

On the real `studio server` and process worker of tests/prefect_server/conftest.py: the
worker's environment has no image provider (and allows stand-ins, as the suite does,
so a resume that lost the settings would publish previews). A batch is created with
ComfyUI in its job variables, its flow-run process is killed -9 while ComfyUI holds
its prompts, the worker reports the run Crashed, and crash recovery resumes it: the
resumed run carries the original job variables, so it uses ComfyUI too and no preview
is published.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from studio.avatars import add_avatar
from studio.db.engine import session_scope
from studio.db.models import ContentPiece
from tests.emulators.base import Behaviour
from tests.emulators.comfyui import ComfyUIEmulator

PIECES = 3


def flow_run_pids(run_id: str) -> list[int]:
    """The processes this test's worker started for `run_id` (Prefect passes the run's
    id in PREFECT__FLOW_RUN_ID), found by their environment."""
    marker = f"PREFECT__FLOW_RUN_ID={run_id}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def wait_for(check, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}")
        time.sleep(0.2)


async def _recover(stack, batch_id: str) -> str:
    from prefect import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from flows.crash_recovery import recover_batch

    with temporary_settings({PREFECT_API_URL: stack.api_url,
                             PREFECT_API_AUTH_STRING: stack.auth_string}):
        async with get_client() as client:
            crashed = await client.read_flow_run(uuid.UUID(batch_id))
            return await recover_batch(client, batch_id, [crashed], 3, "content-batch/on-demand")


@pytest.mark.parametrize("by", ["crash-recovery", "operator"])
def test_a_resume_runs_with_the_original_job_variables(prefect_stack, stack_db, by):
    """`by` crash recovery (its resume of the Crashed run) or the operator (`studio batch
    resume <batch>` with PREFECT_API_URL set: a new run of the batch's deployment)."""
    name = f"resume-{uuid.uuid4().hex[:6]}"
    with session_scope() as session:
        add_avatar(session, name, "travel", f"https://w.example/{name}.safetensors", "on-demand")
    with ComfyUIEmulator(Behaviour(seed=8, hang=True)) as comfyui:
        job_variables = {"env": {
            "COMFYUI_ENABLED": "true",
            "COMFYUI_ENDPOINT": comfyui.url,
            "COMFYUI_POLL_INTERVAL": "0.05",
            "LORA_INFERENCE_PROVIDER_ORDER": "comfyui",
        }}
        created = prefect_stack.create_run(
            "content-batch/on-demand", {"avatar_id": name, "num_pieces": PIECES},
            job_variables=job_variables,
        )
        assert created.status_code in (200, 201), created.text  # 200: Prefect's created-at race
        run_id = created.json()["id"]
        # ComfyUI holds the prompts: the image step is under way, then the process dies
        wait_for(lambda: comfyui.counters.requests("prompt") >= PIECES, "prompts at ComfyUI")
        pids = flow_run_pids(run_id)
        assert pids, "the flow-run process was not found"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        crashed = prefect_stack.wait_final(run_id)
        assert crashed["state_type"] == "CRASHED", crashed["state"]
        comfyui.behaviour.hang = False

        if by == "crash-recovery":
            outcome = asyncio.run(_recover(prefect_stack, run_id))
            assert outcome.startswith("resumed"), outcome
            resume_id = outcome.rsplit(" ", 1)[-1]
        else:
            done = prefect_stack.studio("batch", "resume", run_id)
            assert done.returncode == 0, done.stdout + done.stderr
            line = " ".join(done.stdout.split())
            # its own resume, or (the crash automation is on once `studio automations
            # apply` ran) crash recovery's, which it then leaves to finish the batch
            assert ("of deployment on-demand (with the original run's job variables)" in line
                    or ("already being resumed as run" in line and "(by crash-recovery)" in line))
            resume_id = re.search(r"resumed as run ([0-9a-f-]{36})", line).group(1)
        resumed = prefect_stack.wait_final(resume_id)
        assert resumed["state_type"] == "COMPLETED", prefect_stack.tail("worker")
        assert resumed["job_variables"] == job_variables  # the original run's, carried over
        assert resumed["deployment_id"] == crashed["deployment_id"]
        # any other resume of the batch (both asked at once) ended too, without failing
        for other in prefect_stack.runs({"tags": {"any_": [f"auto-resume:{run_id}",
                                                             f"resumes:{run_id}"]}}):
            assert prefect_stack.wait_final(other["id"])["state_type"] == "COMPLETED"
    with session_scope() as session:
        pieces = list(session.scalars(select(ContentPiece).where(ContentPiece.batch_id == run_id)))
    assert len(pieces) == PIECES
    assert {p.provider for p in pieces} == {"comfyui"}  # no preview stood in
    assert not [p for p in pieces if any(m.startswith("image:") for m in p.stand_ins or [])]
    assert {p.status for p in pieces} <= {"published", "rejected"}


def test_a_deployment_run_with_no_image_provider_is_refused(prefect_stack, stack_db):
    """The worker has no image provider; with stand-ins not allowed (as in production)
    the batch is refused at validation, naming what to set, and nothing is made."""
    name = f"refuse-{uuid.uuid4().hex[:6]}"
    with session_scope() as session:
        add_avatar(session, name, "travel", f"https://w.example/{name}.safetensors", "on-demand")
    created = prefect_stack.create_run(
        "content-batch/on-demand", {"avatar_id": name, "num_pieces": 2},
        job_variables={"env": {"ALLOW_STAND_INS": "false"}},
    )
    assert created.status_code in (200, 201), created.text  # 200: Prefect's created-at race
    run = prefect_stack.wait_final(created.json()["id"])
    assert (run["state_type"], run["state"]["name"]) == ("FAILED", "Refused"), run["state"]
    message = run["state"]["message"]
    assert message.startswith("providers: no image provider is configured for a run of deployment")
    assert "ALLOW_STAND_INS=true" in message
    with session_scope() as session:
        made = session.scalars(select(ContentPiece).where(ContentPiece.batch_id == run["id"]))
        assert list(made) == []
