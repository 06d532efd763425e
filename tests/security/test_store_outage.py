"""An object-store outage loses nothing paid for (issue 15, finding 4).

Real parts only: the SeaweedFS S3 server shaped like R2 (a public content bucket, a
private bucket for premium pieces and staging) whose gateway process is stopped for a
real outage, the Replicate emulator as the billed provider (it counts the predictions
it would bill), the real flow on a real Prefect API, the cost ledger, and for the resume
a real kill -9 of a batch process (tests/storage/crash_runner.py).
"""

from __future__ import annotations

import json
import logging
import signal
import uuid
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from studio.db.engine import session_scope
from studio.db.models import ContentPiece, CostLedgerEntry
from tests.tasks.conftest import emulators, provider_env  # noqa: F401 - fixtures

STAGING_WARNING = "Staging on local disk only"


@pytest.fixture
def outage_env(prefect_api, studio_env, s3_server, provider_env, emulators, monkeypatch):  # noqa: F811
    """R2 as the README's production set-up has it, the Replicate emulator as the only
    (billed) image provider; the S3 gateway is started again whatever the test did."""
    from studio.bootstrap import ensure_demo_avatar
    from studio.settings import reload_settings
    from studio.staging_outage import reset_outages

    s3_server.start()
    public, private = s3_server.new_bucket("content", public=True), s3_server.new_bucket("private")
    env = {
        "R2_ENDPOINT_URL": s3_server.endpoint_url,
        "R2_ACCESS_KEY_ID": s3_server.access_key,
        "R2_SECRET_ACCESS_KEY": s3_server.secret_key,
        "R2_BUCKET_NAME": public,
        "R2_PUBLIC_URL": s3_server.public_url(public),
        "R2_PRIVATE_BUCKET_NAME": private,
        "R2_STAGING_BUCKET": private,
        "R2_MAX_ATTEMPTS": "1",
        "R2_CONNECT_TIMEOUT_SECONDS": "1",
        "UPLOAD_TO_STORAGE_ENABLED": "true",
        "LORA_INFERENCE_PROVIDER_ORDER": "replicate",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = reload_settings()
    reset_outages()
    ensure_demo_avatar()
    _, _, replicate = emulators
    try:
        yield settings, s3_server, public, private, replicate
    finally:
        s3_server.start()
        reset_outages()


def _rows(batch_id: str) -> list[ContentPiece]:
    with session_scope() as session:
        return list(session.scalars(select(ContentPiece).where(ContentPiece.batch_id == batch_id)))


def _billed(batch_id: str) -> list[CostLedgerEntry]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(CostLedgerEntry).where(
                    CostLedgerEntry.batch_id == batch_id, CostLedgerEntry.status == "billed"
                )
            )
        )


def _assert_no_secret(settings, server, text: str) -> None:
    assert server.secret_key not in text
    assert server.access_key not in text
    log_file = Path(settings.log_file)
    if log_file.exists():
        assert server.secret_key not in log_file.read_text()


def _assert_kept_locally(settings, batch_id: str, rows: list[ContentPiece]) -> None:
    """Every passed piece is `stored_locally`, marked for sync, its file on this disk."""
    passed = [r for r in rows if r.status not in ("rejected", "pending_review")]
    assert passed, "the batch had no piece to keep"
    for row in passed:
        assert row.status == "stored_locally", (row.id, row.status)
        assert row.needs_sync and row.storage_backend == "local"
        assert (settings.studio_home / "content" / row.storage_key).is_file()
        assert "storage:local" in row.stand_ins


async def test_store_outage_before_the_batch_keeps_every_piece_billed_once(
    outage_env, caplog
) -> None:
    """The finding: a 4-piece batch with the store unreachable failed every piece at
    staging, after the provider had billed them. Now: every piece is made once, kept
    on local disk, the batch completes, and one warning line says why."""
    from flows.content_batch import content_batch

    settings, server, _, _, replicate = outage_env
    server.stop()
    with caplog.at_level(logging.INFO):
        result = await content_batch(avatar_id="demo", num_pieces=4, seed=3)

    assert result.status == "completed" and result.failed == 0
    assert result.stored_locally == result.requested - result.rejected - result.pending_review
    assert replicate.billed_jobs == 4  # billed once per image, none bought again
    billed = _billed(result.batch_id)
    assert len(billed) == 4 and len({r.piece_id for r in billed}) == 4
    rows = _rows(result.batch_id)
    assert len(rows) == 4
    _assert_kept_locally(settings, result.batch_id, rows)
    for row in rows:  # staged on this host only (cleaned at the end); the store never had it
        assert row.image_info["staged_key"] is None
    staging_lines = [r for r in caplog.records if r.getMessage().startswith(STAGING_WARNING)]
    assert len(staging_lines) == 1  # one line for the batch, not one per piece
    assert staging_lines[0].levelno == logging.WARNING
    assert result.batch_id in staging_lines[0].getMessage()
    stored_lines = [r for r in caplog.records if r.getMessage().startswith("Stored locally")]
    assert len(stored_lines) == 1
    assert f"Pieces: {result.stored_locally}" in stored_lines[0].getMessage()
    complete = [r.getMessage() for r in caplog.records if "[BATCH COMPLETE]" in r.getMessage()]
    assert len(complete) == 1 and f"| Pieces: {result.stored_locally} |" in complete[0]
    _assert_no_secret(settings, server, caplog.text)


async def test_store_down_mid_batch_loses_no_piece_then_sync_publishes_each_once(
    outage_env, caplog
) -> None:
    """The store goes away once the first images are staged: no piece is lost or bought
    twice, the batch completes; with the store back, `studio storage-sync` uploads every
    kept piece exactly once and it becomes published."""
    from typer.testing import CliRunner

    from cli.app import app
    from flows.content_batch import content_batch
    from studio import progress_events as step_progress

    settings, server, public, private, replicate = outage_env
    replicate.behaviour.latency = (0.05, 0.2)
    replicate.behaviour.finish_at_most = 2  # two images are staged, the rest wait...

    def take_the_store_down(step: str, done: int, total: int) -> None:
        if step == "images" and done == 2 and server.running:
            server.stop()  # a real outage: the S3 gateway process is gone
            replicate.behaviour.finish_at_most = None  # ...and finish once it is down

    step_progress.subscribe(take_the_store_down)
    try:
        with caplog.at_level(logging.INFO):
            result = await content_batch(avatar_id="demo", num_pieces=8, seed=5)
    finally:
        step_progress.unsubscribe(take_the_store_down)

    assert not server.running
    assert result.status == "completed" and result.failed == 0
    assert replicate.billed_jobs == 8 and len(_billed(result.batch_id)) == 8
    rows = _rows(result.batch_id)
    staged_remotely = [r for r in rows if r.image_info["staged_key"]]
    assert 2 <= len(staged_remotely) < 8  # before the outage in the store, after it local
    _assert_kept_locally(settings, result.batch_id, rows)
    staging_lines = [r for r in caplog.records if r.getMessage().startswith(STAGING_WARNING)]
    assert len(staging_lines) == 1
    _assert_no_secret(settings, server, caplog.text)
    kept = [r for r in rows if r.status == "stored_locally"]

    # still down: the sync stops at once and keeps every piece
    runner = CliRunner()
    down = runner.invoke(app, ["storage-sync"])
    assert down.exit_code == 1
    assert all(r.status == "stored_locally" for r in _rows(result.batch_id) if r in kept)

    server.start()
    up = runner.invoke(app, ["storage-sync"])
    assert up.exit_code == 0, up.output
    report = json.loads(up.output)
    assert report["synced"] == len(kept) and report["remaining"] == 0
    s3 = server.client()

    def where(key: str) -> list[tuple[str, str]]:
        found = []
        for bucket in (public, private):
            try:
                head = s3.head_object(Bucket=bucket, Key=key)
            except s3.exceptions.ClientError:
                continue
            found.append((bucket, head["ETag"] + str(head["LastModified"])))
        return found

    synced = {r.id: r for r in _rows(result.batch_id) if r.id in {k.id for k in kept}}
    before = {}
    for row in synced.values():
        assert row.status == "published" and not row.needs_sync
        assert row.storage_backend == "r2"
        assert "storage:local" not in row.stand_ins
        located = where(row.storage_key)
        assert len(located) == 1, located  # one object per piece
        before[row.id] = located
        assert not (settings.studio_home / "content" / row.storage_key).exists()  # moved

    again = runner.invoke(app, ["storage-sync"])
    assert again.exit_code == 0 and json.loads(again.output)["synced"] == 0
    assert {piece: where(row.storage_key) for piece, row in synced.items()} == before
    assert replicate.billed_jobs == 8


def test_resume_with_the_store_down_reuses_the_local_staged_images(
    prefect_api, studio_env, s3_server, tmp_path
) -> None:
    """A batch killed (-9) mid image step while the store is down, resumed with the store
    still down: the images staged on this host are reused, nothing is bought again,
    every piece is saved (kept locally for the sync)."""
    from studio.bootstrap import ensure_demo_avatar
    from studio.db.piece_progress import SAVED
    from tests.storage.test_resume_kill import _child_env, _lines

    ensure_demo_avatar()
    s3_server.start()
    public, private = s3_server.new_bucket("content", public=True), s3_server.new_bucket("private")
    env = _child_env(
        studio_env,
        {
            "R2_ENDPOINT_URL": s3_server.endpoint_url,
            "R2_ACCESS_KEY_ID": s3_server.access_key,
            "R2_SECRET_ACCESS_KEY": s3_server.secret_key,
            "R2_BUCKET_NAME": public,
            "R2_PUBLIC_URL": s3_server.public_url(public),
            "R2_PRIVATE_BUCKET_NAME": private,
            "R2_STAGING_BUCKET": private,
            "R2_MAX_ATTEMPTS": "1",
            "R2_CONNECT_TIMEOUT_SECONDS": "1",
        },
    )
    probes = tmp_path / "probes"
    probes.mkdir()
    batch_id = str(uuid.uuid4())
    pieces = 6
    s3_server.stop()
    try:
        assert _run(env, probes, batch_id, pieces, "--crash-at", "image:4") == -signal.SIGKILL
        first = _lines(probes / "renders.log")
        assert len(first) == 3
        staged = studio_env.work_dir / batch_id
        assert all((staged / f"{piece}.json").exists() for piece in first)

        assert _run(env, probes, batch_id, pieces, "--resume") == 0
    finally:
        s3_server.start()
    renders = Counter(_lines(probes / "renders.log"))
    assert len(renders) == pieces and max(renders.values()) == 1  # nothing bought again
    rows = _rows(batch_id)
    assert len(rows) == pieces and all(r.status in SAVED for r in rows)
    assert not any(r.status == "failed" for r in rows)
    _assert_kept_locally(studio_env, batch_id, rows)
    assert not s3_server.client().list_objects_v2(Bucket=private).get("Contents")


def _run(env: dict[str, str], probes: Path, batch_id: str, pieces: int, *extra: str) -> int:
    """The crash runner of tests/storage, with this test's piece count."""
    import subprocess
    import sys

    from tests.storage.test_resume_kill import ROOT

    command = [
        sys.executable, "-m", "tests.storage.crash_runner", "--batch-id", batch_id,
        "--pieces", str(pieces), "--probe-dir", str(probes), *extra,
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=600)
    if done.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(done.stderr.decode(errors="replace")[-4000:])
    return done.returncode


async def test_no_outage_no_warning_and_staging_reaches_the_store(outage_env, caplog) -> None:
    """The control: with the store up, images are staged in the private bucket and the
    pieces are published (the outage tests above can fail)."""
    from flows.content_batch import content_batch

    with caplog.at_level(logging.INFO):
        result = await content_batch(avatar_id="demo", num_pieces=2, seed=7)
    rows = _rows(result.batch_id)
    assert all(r.image_info["staged_key"] for r in rows)
    assert all(r.status in ("published", "rejected", "pending_review") for r in rows)
    assert result.stored_locally == 0
    assert STAGING_WARNING not in caplog.text
