"""Staging goes when nothing needs it: a completed batch's at once, the rest by the sweep.

Real SeaweedFS (private staging bucket) and the local staging folders; the batch rows
say which batches may still be resumed.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from studio.db.engine import session_scope
from studio.db.models import Batch
from studio.settings import reload_settings
from studio.staging import open_staging
from studio.staging_cleanup import clean_batch_staging, sweep_staging
from studio.types import GeneratedImage
from tests.storage.conftest import r2_env
from tests.storage.test_persistence import _avatar_and_batch, _specs

PNG = b"\x89PNG\r\n\x1a\n" + b"staged" * 20


@pytest.fixture
def staging_env(studio_env, s3_server, s3_bucket, s3_private_bucket, monkeypatch):
    for name, value in r2_env(s3_server, s3_bucket, s3_private_bucket).items():
        monkeypatch.setenv(name, value)
    return reload_settings()


def _stage(settings, batch_id: str, status: str | None, pieces: int = 2) -> None:
    """A batch row in `status` (None: no row) with `pieces` staged images, remote and local."""
    if status is not None:
        _avatar_and_batch(batch_id)
        with session_scope() as session:
            session.get(Batch, batch_id).status = status  # type: ignore[union-attr]
    staging = open_staging(settings.work_dir, batch_id)
    for i in range(pieces):
        piece = f"{batch_id}-p{i}"
        image = GeneratedImage(
            piece_id=piece, path="", provider="preview", content_type="image/png"
        )
        staging.save(image, PNG)


def _staged(s3_server, bucket: str, batch_id: str) -> list[str]:
    listing = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=f"staging/{batch_id}/")
    return [o["Key"] for o in listing.get("Contents", [])]


def test_a_completed_batch_loses_its_staging_and_no_other(
    staging_env, s3_server, s3_private_bucket
) -> None:
    done, other = str(uuid.uuid4()), str(uuid.uuid4())
    _stage(staging_env, done, "completed")
    _stage(staging_env, other, "running")
    assert len(_staged(s3_server, s3_private_bucket, done)) == 4  # image + metadata each

    report = clean_batch_staging(done)
    assert report.objects_deleted == 4 and report.local_dirs_deleted == 1 and not report.errors
    assert _staged(s3_server, s3_private_bucket, done) == []
    assert not (staging_env.work_dir / done).exists()
    assert len(_staged(s3_server, s3_private_bucket, other)) == 4
    assert (staging_env.work_dir / other).is_dir()


def test_a_piece_held_for_review_keeps_its_staged_image(
    staging_env, s3_server, s3_private_bucket
) -> None:
    """Its staged image is its only copy: kept (privately) until the retention sweep."""
    from studio.db import piece_progress
    from studio.db.models import ContentPiece

    batch_id = str(uuid.uuid4())
    _stage(staging_env, batch_id, "completed", pieces=3)
    held = f"{batch_id}-p1"
    with session_scope() as session:
        avatar_id = session.get(Batch, batch_id).avatar_id  # type: ignore[union-attr]
        piece_progress.record_plan(session, avatar_id, batch_id, _specs(batch_id, 3))
        session.get(ContentPiece, held).status = "pending_review"  # type: ignore[union-attr]

    clean_batch_staging(batch_id)
    left = _staged(s3_server, s3_private_bucket, batch_id)
    assert sorted(left) == sorted(f"staging/{batch_id}/{held}.{ext}" for ext in ("png", "json"))
    assert sorted(p.name for p in (staging_env.work_dir / batch_id).iterdir()) == [
        f"{held}.json",
        f"{held}.png",
    ]
    assert sweep_staging().batches == []  # the sweep keeps it too, within the retention
    later = datetime.now(UTC) + timedelta(days=8)
    assert sweep_staging(now=later).batches == [batch_id]
    assert _staged(s3_server, s3_private_bucket, batch_id) == []


def test_the_sweep_keeps_what_a_resume_needs_and_removes_the_rest(
    staging_env, s3_server, s3_private_bucket
) -> None:
    ids = {status: str(uuid.uuid4()) for status in ("completed", "failed", "crashed", "running")}
    for status, batch_id in ids.items():
        _stage(staging_env, batch_id, status)
    orphan = str(uuid.uuid4())
    _stage(staging_env, orphan, None)

    report = sweep_staging()  # now: only the completed batch's staging goes
    assert report.batches == [ids["completed"]]
    assert _staged(s3_server, s3_private_bucket, ids["completed"]) == []
    for status in ("failed", "crashed", "running"):
        assert _staged(s3_server, s3_private_bucket, ids[status])
        assert (staging_env.work_dir / ids[status]).is_dir()

    later = datetime.now(UTC) + timedelta(days=7, hours=1)  # past STAGING_RETENTION_DAYS
    report = sweep_staging(now=later)
    assert sorted(report.batches) == sorted([ids["failed"], ids["crashed"], ids["running"], orphan])
    for batch_id in [*ids.values(), orphan]:
        assert _staged(s3_server, s3_private_bucket, batch_id) == []
        assert not (staging_env.work_dir / batch_id).exists()


def test_a_cleanup_during_an_outage_never_fails_the_batch_and_the_sweep_finishes_it(
    staging_env, s3_server, s3_private_bucket, prefect_api, caplog
) -> None:
    from tasks.clean_staging import clean_staging

    batch_id = str(uuid.uuid4())
    _stage(staging_env, batch_id, "completed")
    s3_server.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="studio.staging"):
            report = clean_staging(batch_id)
    finally:
        s3_server.start()
    assert report.errors and "remote staging kept" in report.errors[0]
    assert "Staging not cleaned" in caplog.text and s3_server.secret_key not in caplog.text
    assert not (staging_env.work_dir / batch_id).exists()  # the local copy went anyway
    assert len(_staged(s3_server, s3_private_bucket, batch_id)) == 4

    swept = sweep_staging()
    assert swept.batches == [batch_id] and swept.objects_deleted == 4
    assert _staged(s3_server, s3_private_bucket, batch_id) == []
