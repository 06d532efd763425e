"""R2 outage mid-batch: pieces fall back to the local store, storage-sync moves them up later."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from studio import progress_events as step_progress
from studio.db.engine import session_scope
from studio.db.models import ContentPiece
from studio.settings import reload_settings
from studio.storage.base import object_key, sha256_hex
from studio.storage.errors import StorageUnavailable
from studio.storage.fallback import FallbackContentStore
from studio.storage.local import LocalContentStore
from studio.storage.r2 import R2ContentStore
from studio.storage.sync import sync_pending
from tests.storage.conftest import r2_settings

PNG = b"\x89PNG\r\n\x1a\n" + b"fallback test bytes" * 40


def _count_puts(store: R2ContentStore) -> list[int]:
    """One entry per PutObject that got a response."""
    done: list[int] = []
    store.client.meta.events.register("after-call.s3.PutObject", lambda **_: done.append(1))
    return done


def _bucket_keys(s3_server, bucket: str) -> list[str]:
    listing = s3_server.client().list_objects_v2(Bucket=bucket)
    return [o["Key"] for o in listing.get("Contents", [])]


def test_fallback_keeps_file_locally_and_marks_it(
    s3_server, s3_bucket, s3_private_bucket, tmp_path, caplog
):
    r2 = R2ContentStore(r2_settings(s3_server, s3_bucket, s3_private_bucket))
    store = FallbackContentStore(r2, LocalContentStore(tmp_path))
    key = object_key("av", "b", "p1")
    s3_server.stop()
    try:
        with caplog.at_level(logging.ERROR):
            stored = store.put("p1", key, PNG, "image/png", "capa2")
    finally:
        s3_server.start()
    assert stored.backend == "local" and stored.needs_sync
    assert (tmp_path / key).read_bytes() == PNG
    assert stored.checksum == sha256_hex(PNG)
    assert "Storage upload failed" in caplog.text
    assert s3_server.secret_key not in caplog.text
    # this upload saw R2 down: its other pieces go local at once, without waiting on R2
    heads: list[int] = []
    r2.client.meta.events.register("before-call.s3.HeadObject", lambda **_: heads.append(1))
    later = store.put("p3", object_key("av", "b", "p3"), PNG, "image/png", "capa1")
    assert later.backend == "local" and later.needs_sync and not heads
    # with R2 back, the next upload (each upload task run builds its store) uploads
    fresh = FallbackContentStore(r2, LocalContentStore(tmp_path))
    again = fresh.put("p2", object_key("av", "b", "p2"), PNG, "image/png", "capa1")
    assert again.backend == "r2" and not again.needs_sync


def test_local_store_refuses_keys_escaping_its_root(tmp_path):
    with pytest.raises(ValueError):
        LocalContentStore(tmp_path).put("p", "../outside.png", PNG, "image/png", "capa1")


@pytest.fixture
def r2_env(monkeypatch, s3_server, s3_bucket, s3_private_bucket, studio_env):
    """Point the pipeline's storage at the SeaweedFS buckets through the R2_* variables."""
    from tests.storage.conftest import r2_env as shaped_like_r2

    for name, value in shaped_like_r2(s3_server, s3_bucket, s3_private_bucket).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("UPLOAD_TO_STORAGE_ENABLED", "true")
    return reload_settings()


def _stop_after_images(s3_server):
    """Stop the S3 server the moment the last image of the batch is made (mid-batch)."""

    def listener(step: str, done: int, total: int) -> None:
        if step == "images" and total and done == total:
            s3_server.stop()

    step_progress.subscribe(listener)
    return listener


def test_outage_mid_batch_then_sync_after_restart(
    prefect_api, r2_env, s3_server, s3_bucket, s3_private_bucket
):
    from flows.content_batch import content_batch
    from flows.storage_sync import storage_sync
    from studio.bootstrap import ensure_demo_avatar

    ensure_demo_avatar()
    listener = _stop_after_images(s3_server)
    try:
        result = asyncio.run(content_batch(avatar_id="demo", num_pieces=8, seed=5))
    finally:
        step_progress.unsubscribe(listener)
    # kept locally (stored_locally) while R2 is down; published once storage-sync ran
    published = [p for p in result.pieces if p.status.value == "stored_locally"]
    assert published, "the batch must still keep its pieces while R2 is down"
    with session_scope() as session:
        rows = list(session.scalars(select(ContentPiece).where(ContentPiece.needs_sync)))
    assert {r.id for r in rows} == {p.piece_id for p in published}
    assert all(r.storage_backend == "local" and r.url.startswith("file://") for r in rows)
    assert all("storage:local" in r.stand_ins for r in rows)

    # still down: the sync stops at the first failure and keeps every mark
    report = storage_sync()
    assert report["synced"] == 0 and report["failed"] == 1
    assert report["remaining"] == len(published)

    s3_server.start()
    report = storage_sync()
    assert {k: v for k, v in report.items() if k != "staging_swept"} == {
        "synced": len(published),
        "failed": 0,
        "missing": 0,
        "remaining": 0,
        "errors": [],
    }
    keys = _bucket_keys(s3_server, s3_bucket) + _bucket_keys(s3_server, s3_private_bucket)
    with session_scope() as session:
        rows = list(
            session.scalars(select(ContentPiece).where(ContentPiece.batch_id == result.batch_id))
        )
    stored = [r for r in rows if r.status == "published"]
    assert sorted(keys) == sorted(r.storage_key for r in stored)  # exactly one object each
    for row in stored:
        assert not row.needs_sync and row.storage_backend == "r2"
        assert "storage:local" not in row.stand_ins
        premium = row.access_tier != "capa1"
        bucket = s3_private_bucket if premium else s3_bucket
        head = s3_server.client().head_object(Bucket=bucket, Key=row.storage_key)
        assert head["Metadata"]["sha256"] == row.checksum
        if premium:  # no lasting link: minted on demand from the private bucket
            assert not row.url
            url = s3_server.client().generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": row.storage_key}
            )
        else:
            url = row.url
            assert url.startswith(s3_server.public_url(s3_bucket))
        response = httpx.get(url)
        assert response.status_code == 200 and sha256_hex(response.content) == row.checksum
        local_file = Path(r2_env.studio_home / "content" / row.storage_key)
        assert not local_file.exists()  # moved, not copied

    again = storage_sync()  # nothing left: nothing uploaded twice
    assert again["synced"] == 0 and again["remaining"] == 0
    assert sorted(
        _bucket_keys(s3_server, s3_bucket) + _bucket_keys(s3_server, s3_private_bucket)
    ) == sorted(keys)


def test_sync_does_not_reupload_what_a_dead_sync_already_uploaded(
    r2_env, s3_server, s3_bucket, s3_private_bucket, tmp_path
):
    """A sync that died after its PUT but before its commit: the next one only clears marks."""
    from studio.db import piece_progress
    from tests.storage.test_persistence import _avatar_and_batch, _specs

    avatar_id = _avatar_and_batch("batch-s")
    specs = _specs("batch-s", 3)
    local = LocalContentStore(tmp_path / "local")
    kept = []
    for spec in specs:
        key = object_key(avatar_id, "batch-s", spec.piece_id)
        obj = local.put(spec.piece_id, key, PNG + spec.piece_id.encode(), "image/png", spec.tier)
        kept.append(obj.model_copy(update={"needs_sync": True}))
    with session_scope() as session:
        piece_progress.record_plan(session, avatar_id, "batch-s", specs)
        piece_progress.record_stored(session, kept)
    remote = R2ContentStore(r2_settings(s3_server, s3_bucket, s3_private_bucket))
    # the dead sync got as far as uploading the first file
    first = kept[0]
    remote.put(first.piece_id, first.key, local.read(first.key), "image/png", specs[0].tier)

    puts = _count_puts(remote)
    report = sync_pending(session_scope, local, remote)
    assert report.synced == 3 and report.remaining == 0
    assert len(puts) == 2  # the first file was already there with the same checksum
    assert sorted(
        _bucket_keys(s3_server, s3_bucket) + _bucket_keys(s3_server, s3_private_bucket)
    ) == sorted(o.key for o in kept)


def test_sync_counts_a_missing_local_file_and_keeps_its_mark(
    r2_env, s3_server, s3_bucket, tmp_path
):
    from studio.db import piece_progress
    from tests.storage.test_persistence import _avatar_and_batch, _specs

    avatar_id = _avatar_and_batch("batch-m")
    spec = _specs("batch-m", 1)[0]
    lost = object_key(avatar_id, "batch-m", spec.piece_id)
    with session_scope() as session:
        piece_progress.record_plan(session, avatar_id, "batch-m", [spec])
        piece_progress.record_stored(
            session,
            [
                LocalContentStore(tmp_path)
                .put(spec.piece_id, lost, PNG, "image/png", "capa1")
                .model_copy(update={"needs_sync": True})
            ],
        )
    (tmp_path / lost).unlink()
    remote = R2ContentStore(r2_settings(s3_server, s3_bucket, "unused-private"))
    report = sync_pending(session_scope, LocalContentStore(tmp_path), remote)
    assert report.missing == 1 and report.synced == 0 and report.remaining == 1
    assert "local file missing" in report.errors[0]


def test_sync_without_r2_configured_changes_nothing(prefect_api, studio_env, monkeypatch):
    from flows.storage_sync import storage_sync

    for name in ("R2_ENDPOINT_URL", "R2_ACCOUNT_ID", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    reload_settings()
    assert storage_sync() == {
        "synced": 0,
        "failed": 0,
        "missing": 0,
        "remaining": 0,
        "errors": [],
        "staging_swept": 0,
    }


def test_outage_error_type_is_what_the_fallback_catches(s3_server, s3_bucket):
    r2 = R2ContentStore(r2_settings(s3_server, s3_bucket, "unused-private"))
    s3_server.stop()
    try:
        with pytest.raises(StorageUnavailable):
            r2.stored_checksum("any/key.png")
    finally:
        s3_server.start()


def test_health_shows_backend_and_pending_sync_without_secrets(r2_env, s3_server) -> None:
    import json

    from studio.storage.registry import storage_status

    status = storage_status(r2_env)
    assert status["configured"] is True and status["backend"] == "r2"
    assert status["pending_sync"] == 0
    assert s3_server.secret_key not in json.dumps(status)
