"""A run killed -9 mid-generation leaves `reserved` ledger rows; its resume settles them:
billed when the provider has the job (asked by id, or found among its predictions by
the piece's seed), released otherwise, so the ledger keeps no open reservation of a dead
run and its billed rows match what the provider billed (the emulator's counter).

The killed process is real (tests/ledger/dead_run_child.py, SIGKILL while the Replicate
emulator holds its `Prefer: wait` creates); the database, clients and emulator are real.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from studio.db.engine import session_scope
from studio.db.models import CostLedgerEntry
from studio.ledger.dead_runs import JobAnswer, OpenRow, settle_dead_rows
from studio.ledger.store import CallKey, CostLedger
from studio.providers.job_lookup import ProviderJobLookup
from studio.providers.settings import ProviderSettings
from tests.emulators.base import Behaviour
from tests.emulators.replicate_api import ReplicateEmulator
from tests.ledger.conftest import AVATAR, piece

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "r8_dead_run_token_0001"
PIECES = 4
PROVIDER_KEYS = (
    "COMFYUI_ENABLED", "COMFYUI_ENDPOINT", "MODAL_SDXL_ENDPOINT", "MODAL_TOKEN_ID",
    "MODAL_TOKEN_SECRET", "LORA_INFERENCE_PROVIDER_ORDER", "PROVIDER_STRATEGY",
)


@pytest.fixture
def replicate(monkeypatch) -> Iterator[ReplicateEmulator]:
    emulator = ReplicateEmulator(Behaviour(seed=5), token=TOKEN)
    with emulator:
        for key in PROVIDER_KEYS:
            monkeypatch.delenv(key, raising=False)
        for key, value in {
            "REPLICATE_API_TOKEN": TOKEN,
            "REPLICATE_BASE_URL": emulator.url,
            "REPLICATE_POLL_INTERVAL": "0.02",
            "PROVIDER_BACKOFF_UNIT": "0.01",
            "LORA_INFERENCE_PROVIDER_ORDER": "replicate",
        }.items():
            monkeypatch.setenv(key, value)
        import tasks.generate_images as generate_images

        generate_images._chain = None
        yield emulator
        emulator.behaviour.hang = False
        generate_images._chain = None


def ledger_rows(batch_id: str) -> list[CostLedgerEntry]:
    with session_scope() as session:
        return list(
            session.scalars(select(CostLedgerEntry).where(CostLedgerEntry.batch_id == batch_id))
        )


def child_env(settings) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith(("R2_", "PREFECT_"))}
    env.update({
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_HOME": str(settings.studio_home / "prefect-home"),
        "STUDIO_HOME": str(settings.studio_home),
        "LOG_FILE": str(settings.log_file),
        "PYTHONPATH": str(ROOT),
    })
    if settings.database_url:
        env["DATABASE_URL"] = settings.database_url
    return env


def kill_when_in_flight(
    mode: str, batch_id: str, emulator: ReplicateEmulator, env: dict[str, str]
) -> None:
    """Start the child, wait until every call is created at the provider and reserved in
    the ledger (the emulator holds the answers), then SIGKILL it."""
    emulator.behaviour.hang = True
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.ledger.dead_run_child", mode, batch_id, str(PIECES)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    try:
        while True:
            reserved = [r for r in ledger_rows(batch_id) if r.status == "reserved"]
            if emulator.billed_jobs >= PIECES and len(reserved) >= PIECES:
                break
            if child.poll() is not None or time.monotonic() > deadline:
                out = child.stdout.read().decode(errors="replace") if child.stdout else ""
                raise AssertionError(f"child never had {PIECES} calls in flight:\n{out[-4000:]}")
            time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    emulator.behaviour.hang = False


async def test_a_killed_runs_reserved_rows_are_billed_if_the_provider_has_the_job(
    any_database, replicate
) -> None:
    batch_id = f"dead-{uuid.uuid4().hex[:8]}"
    kill_when_in_flight("chain", batch_id, replicate, child_env(any_database))
    # the process died before any answer: every row is reserved, none has a job id
    rows = ledger_rows(batch_id)
    assert [(r.status, r.job_id) for r in rows] == [("reserved", None)] * PIECES
    # and one more reservation whose process died before it sent the create
    never_sent = piece(PIECES, batch_id)
    CostLedger().reserve(
        CallKey("image", "replicate", batch_id, AVATAR.id, (never_sent.piece_id,)), 0.03
    )

    report = await settle_dead_rows(batch_id, ProviderJobLookup(ProviderSettings()))

    assert (report.billed, report.released, report.unconfirmed) == (PIECES, 1, 0)
    rows = ledger_rows(batch_id)
    assert not [r for r in rows if r.status == "reserved"]
    billed = [r for r in rows if r.status == "billed"]
    assert len(billed) == replicate.billed_jobs == PIECES
    assert {r.job_id for r in billed} == set(replicate.predictions)  # each its own job
    assert {r.outcome for r in billed} == {"lost"}  # recoverable: a resume fetches them
    (released,) = [r for r in rows if r.status == "released"]
    assert (released.piece_id, released.outcome) == (never_sent.piece_id, "dead-run")
    # settling again finds nothing open
    assert (await settle_dead_rows(batch_id, ProviderJobLookup())).settled == 0


async def test_a_resumed_batch_settles_the_dead_run_and_buys_nothing_twice(
    prefect_api, studio_env, replicate
) -> None:
    from flows.content_batch import content_batch
    from studio.bootstrap import ensure_demo_avatar

    ensure_demo_avatar()
    batch_id = str(uuid.uuid4())
    kill_when_in_flight("flow", batch_id, replicate, child_env(studio_env))
    assert len([r for r in ledger_rows(batch_id) if r.status == "reserved"]) == PIECES

    result = await content_batch(avatar_id="demo", num_pieces=PIECES, resume_batch_id=batch_id)

    assert result.published + result.pending_review + result.rejected == PIECES
    rows = ledger_rows(batch_id)
    assert not [r for r in rows if r.status == "reserved"]  # no open reservation left
    billed = [r for r in rows if r.status == "billed" and r.kind == "image"]
    # the resume fetched the dead run's predictions instead of buying new ones
    assert replicate.billed_jobs == PIECES == len(billed)
    assert {r.job_id for r in billed} == set(replicate.predictions)
    assert {r.outcome for r in billed} == {"recovered"}
    assert result.cost_breakdown["images"] == pytest.approx(0.03 * PIECES)


class _Unreachable:
    async def find(self, row: OpenRow) -> JobAnswer:
        raise ConnectionError("provider down")


async def test_a_row_the_provider_cannot_be_asked_about_is_billed_unconfirmed(
    any_database, caplog
) -> None:
    batch_id = f"dead-{uuid.uuid4().hex[:8]}"
    spec = piece(0, batch_id)
    CostLedger().reserve(CallKey("image", "modal", batch_id, AVATAR.id, (spec.piece_id,)), 0.01)

    report = await settle_dead_rows(batch_id, _Unreachable())

    assert report.unconfirmed == 1
    ((status, outcome),) = [(r.status, r.outcome) for r in ledger_rows(batch_id)]
    assert (status, outcome) == ("billed", "unconfirmed")  # over-counting beats missing money
    assert "Dead-run lookup failed | Provider: modal | Error: ConnectionError" in caplog.text


async def test_without_a_call_id_modal_cannot_be_asked(any_database) -> None:
    row = OpenRow(id="r", kind="image", provider="modal", status="reserved", piece_id="p",
                  job_id=None, created_at=time_now())
    settings = ProviderSettings(MODAL_SDXL_ENDPOINT="http://127.0.0.1:9/")
    assert (await ProviderJobLookup(settings).find(row)).found is None


def time_now():
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def test_a_batch_crash_recovery_gives_up_on_has_its_open_rows_settled(
    prefect_api, studio_env, replicate
) -> None:
    """Nothing will resume it, so crash recovery settles its rows as it gives up: here a
    reservation whose create never reached Replicate is released."""
    from prefect import get_client
    from prefect.states import Crashed

    from flows.content_batch import content_batch
    from flows.crash_recovery import recover_batch
    from studio.bootstrap import ensure_demo_avatar
    from studio.db.models import Batch

    avatar_id = ensure_demo_avatar()
    deployment = await content_batch.ato_deployment(name=f"give-up-{uuid.uuid4().hex[:6]}")
    deployment_id = await deployment.apply()
    async with get_client() as client:
        run = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"avatar_id": "demo", "num_pieces": 1}
        )
        batch_id = str(run.id)
        with session_scope() as session:
            session.add(Batch(id=batch_id, avatar_id=avatar_id, status="running", requested=1,
                              config={"avatar_id": "demo", "num_pieces": 1}))
        spec = piece(0, batch_id)
        CostLedger().reserve(
            CallKey("image", "replicate", batch_id, avatar_id, (spec.piece_id,)), 0.03
        )
        await client.set_flow_run_state(run.id, Crashed(), force=True)
        crashed = await client.read_flow_run(run.id)

        outcome = await recover_batch(client, batch_id, [crashed], 0, "content-batch/on-demand")

    assert outcome.startswith("gave up")
    ((status, outcome_),) = [(r.status, r.outcome) for r in ledger_rows(batch_id)]
    assert (status, outcome_) == ("released", "dead-run")
    assert replicate.billed_jobs == 0
