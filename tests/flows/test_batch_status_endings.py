"""`studio batch status` agrees with the row, the ledger and Prefect in every ending
(issue 16): completed, failed, refused, killed locally, crashed and then resumed.

One source per fact: the state is Prefect's state of the batch's newest run (a killed
local run is `Interrupted`), piece counts are the piece rows, the cost is the ledger's
billed rows. Real Prefect API (the session's test server), the providers' emulators,
a real `studio batch run` process killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from prefect import get_client
from prefect.settings import get_current_settings
from prefect.states import Crashed
from sqlalchemy import func, select
from typer.testing import CliRunner

from cli.app import app
from studio.db.engine import session_scope
from studio.db.models import Batch, ContentPiece, CostLedgerEntry
from studio.ledger.totals import batch_cost
from tests.polling import wait_for
from tests.tasks.conftest import emulators, provider_env  # noqa: F401 - fixtures

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def status_json(id_: str) -> dict:
    result = invoke("batch", "status", id_, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def ledger_usd(batch_id: str) -> float:
    with session_scope() as session:
        return batch_cost(session, batch_id).total_usd


def piece_counts(batch_id: str) -> dict[str, int]:
    with session_scope() as session:
        rows = session.execute(
            select(ContentPiece.status, func.count())
            .where(ContentPiece.batch_id == batch_id)
            .group_by(ContentPiece.status)
        ).all()
    return {status: int(n) for status, n in rows}


def test_status_of_a_completed_batch(
    studio_env, provider_env, emulators, monkeypatch  # noqa: F811
) -> None:
    from studio.bootstrap import ensure_demo_avatar

    monkeypatch.setenv("LORA_INFERENCE_PROVIDER_ORDER", "replicate")  # billed calls
    ensure_demo_avatar()
    ran = invoke("batch", "run", "--avatar", "demo", "--pieces", "3", "--seed", "1")
    assert ran.exit_code == 0, ran.output
    batch_id = re.search(r"batch ([0-9a-f-]{36})", ran.output)[1]
    text = invoke("batch", "status", batch_id).output
    assert "state: Completed" in text and f"batch: {batch_id} (completed)" in text
    assert "step: done (completed)" in text and "error:" not in text and "resume:" not in text
    data = status_json(batch_id)
    assert data["piece_counts"] == piece_counts(batch_id)
    assert data["cost_usd"] == ledger_usd(batch_id) > 0  # billed image calls
    assert f"cost: ${ledger_usd(batch_id):.2f}" in text
    assert data["earlier_runs"] == [] and data["hint"] is None


def test_status_of_a_failed_batch(studio_env, provider_env, emulators) -> None:  # noqa: F811
    from studio.bootstrap import ensure_demo_avatar

    for emulator in emulators:
        emulator.behaviour.failure_rate = 1.0
    ensure_demo_avatar()
    ran = invoke("batch", "run", "--avatar", "demo", "--pieces", "2")
    assert ran.exit_code == 1, ran.output
    with session_scope() as session:
        batch_id = session.scalar(select(Batch.id))
    data = status_json(batch_id)
    assert data["state"].startswith("Failed - 0/2 pieces made")
    assert data["ending"] == "failed" and data["step"] == "done (failed)"
    assert data["piece_counts"] == piece_counts(batch_id) == {"failed": 2}
    assert data["cost_usd"] == ledger_usd(batch_id)
    assert data["hint"] == f"studio batch resume {batch_id}"
    text = invoke("batch", "status", batch_id).output
    assert f"batch: {batch_id} (failed)" in text and "Completed" not in text


async def _refused_run() -> str:
    from flows.content_batch import content_batch

    state = await content_batch(
        avatar_id="demo", num_pieces=2, tier_distribution={"capa1": 0.9, "capa2": 0.9,
                                                           "capa3": 0.1}, return_state=True,
    )
    assert state.name == "Refused"
    return str(state.state_details.flow_run_id)


def test_status_of_a_refused_run(studio_env, demo_avatar) -> None:
    run_id = asyncio.run(_refused_run())
    text = invoke("batch", "status", run_id).output
    assert "state: Refused - tier_distribution" in text
    assert f"batch: {run_id} (refused: nothing written)" in text
    assert "step: done (refused)" in text and "resume:" not in text
    with session_scope() as session:
        assert session.get(Batch, run_id) is None


def _start_local_batch(studio_env) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    """`studio batch run` as an operator starts it, in its own process."""
    env = {**os.environ, "PREFECT_API_URL": get_current_settings().api.url}
    studio = Path(sys.executable).parent / "studio"
    return subprocess.Popen(
        [str(studio), "batch", "run", "--avatar", "demo", "--pieces", "3", "--seed", "7"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


async def _crash(run_id: str) -> None:
    """What the zombie-run automation does to a run whose process went silent."""
    async with get_client() as client:
        await client.set_flow_run_state(run_id, Crashed(message="zombie"), force=True)


def test_status_of_a_killed_local_batch_then_crashed_then_resumed(
    studio_env, provider_env, emulators, monkeypatch  # noqa: F811
) -> None:
    from studio.batch_owner import owner_of
    from studio.bootstrap import ensure_demo_avatar

    monkeypatch.setenv("LORA_INFERENCE_PROVIDER_ORDER", "replicate")  # billed calls
    ensure_demo_avatar()
    for emulator in emulators:
        emulator.behaviour.hang = True  # the image step never ends until switched back
    process = _start_local_batch(studio_env)
    try:
        markers = studio_env.studio_home / "running"
        marker = wait_for("the owner marker", lambda: next(iter(markers.glob("*.json")), None))
        batch_id = marker.stem

        def image_calls_in_flight() -> bool:
            with session_scope() as session:
                return bool(session.scalar(select(func.count()).where(
                    CostLedgerEntry.batch_id == batch_id, CostLedgerEntry.status == "reserved"
                )))

        wait_for("an image call in flight", image_calls_in_flight)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()

    # killed: Prefect still says Running, the row running; status says Interrupted
    data = status_json(batch_id)
    assert data["run"]["state"] == "Running" and data["row_status"] == "running"
    assert data["ending"] == "interrupted" and data["state"] == "Interrupted"
    assert data["step"].startswith("stopped at 2/7")
    assert str(process.pid) in data["error"]
    assert data["hint"] == f"studio batch resume {batch_id}"
    assert data["reserved_calls"] >= 1
    text = invoke("batch", "status", batch_id).output
    assert f"batch: {batch_id} (interrupted)" in text and "(running)" not in text
    assert "settled when the batch is resumed" in text
    listed = json.loads(invoke("batch", "list", "--json").output)
    assert [(b["batch_id"], b["status"]) for b in listed] == [(batch_id, "interrupted")]
    only = json.loads(invoke("batch", "list", "--status", "interrupted", "--json").output)
    assert [b["batch_id"] for b in only] == [batch_id]
    assert json.loads(invoke("batch", "list", "--status", "running", "--json").output) == []

    # the zombie automation marks the run Crashed: Prefect's state is the state
    asyncio.run(_crash(batch_id))
    data = status_json(batch_id)
    assert data["state"] == "Crashed - zombie" and data["ending"] == "crashed"
    assert data["hint"] == f"studio batch resume {batch_id}"

    for emulator in emulators:
        emulator.behaviour.hang = False
    resumed = invoke("batch", "resume", batch_id)
    assert resumed.exit_code == 0, resumed.output
    assert owner_of(batch_id) is None  # the resume ended: no marker left

    # after the resume: the resumed run's state, nothing of the old ending
    for asked in (batch_id, status_json(batch_id)["run"]["id"]):
        data = status_json(asked)
        assert data["batch_id"] == batch_id
        assert data["run"]["state"] == "Completed" and data["run"]["id"] != batch_id
        assert data["ending"] == "completed" and data["step"] == "done (completed)"
        assert data["error"] is None and data["hint"] is None
        assert [(r["id"], r["state"]) for r in data["earlier_runs"]] == [(batch_id, "Crashed")]
        assert data["piece_counts"] == piece_counts(batch_id)
        assert sum(data["piece_counts"].values()) == 3
        assert data["cost_usd"] == ledger_usd(batch_id)
        assert data["reserved_calls"] == 0  # the dead run's reservations were settled
    text = invoke("batch", "status", batch_id).output
    assert "state: Completed" in text and f"batch: {batch_id} (completed)" in text
    assert f"earlier run: content-batch-demo-3 ({batch_id}) Crashed, resumed" in text
    assert "step: 2/7" not in text and "error:" not in text


async def _crashed_run_and_queued_resume() -> tuple[str, str]:
    """A deployment's run that crashed, and the resume crash recovery created for it
    (tagged as flows/crash_recovery.py tags it), not picked up by a worker yet."""
    import uuid

    from flows.content_batch import content_batch

    deployment = await content_batch.ato_deployment(name=f"on-demand-{uuid.uuid4().hex[:6]}")
    deployment_id = await deployment.apply()
    async with get_client() as client:
        original = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"avatar_id": "demo", "num_pieces": 3}
        )
        await client.set_flow_run_state(original.id, Crashed(message="zombie"), force=True)
        batch_id = str(original.id)
        resume = await client.create_flow_run_from_deployment(
            deployment_id,
            parameters={"avatar_id": "demo", "num_pieces": 3, "resume_batch_id": batch_id},
            tags=["auto-resume", f"auto-resume:{batch_id}", f"resumes:{batch_id}"],
        )
    return batch_id, str(resume.id)


def test_status_while_a_resume_is_queued_shows_the_resume(studio_env, demo_avatar) -> None:
    batch_id, resume_id = asyncio.run(_crashed_run_and_queued_resume())
    with session_scope() as session:  # the row as the crashed run's state hook left it
        session.add(Batch(id=batch_id, avatar_id=demo_avatar, status="crashed", requested=3,
                          config={"avatar_id": "demo", "num_pieces": 3}, error="run crashed"))
    for asked in (batch_id, resume_id):
        data = status_json(asked)
        assert data["batch_id"] == batch_id
        assert data["run"]["id"] == resume_id and data["run"]["state"] == "Scheduled"
        assert data["ending"] == "queued" and data["step"].startswith("resume queued")
        assert [(r["id"], r["state"]) for r in data["earlier_runs"]] == [(batch_id, "Crashed")]
        assert data["error"] is None and data["hint"] is None  # nothing to do but wait
    text = invoke("batch", "status", batch_id).output
    assert "state: Scheduled" in text and f"batch: {batch_id} (queued)" in text
    assert "Crashed, resumed" in text and "(crashed)" not in text
