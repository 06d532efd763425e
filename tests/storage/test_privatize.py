"""`studio storage-privatize`: premium pieces an earlier version left in the public bucket
move to the private one under secret-keyed names, once, and stop answering anonymously."""

from __future__ import annotations

import json

import httpx
import pytest
from typer.testing import CliRunner

from cli.app import app
from studio.db import piece_progress
from studio.db.engine import session_scope
from studio.db.models import ContentPiece
from studio.settings import reload_settings
from studio.storage.base import sha256_hex
from studio.types import StoredObject
from tests.storage.conftest import r2_env
from tests.storage.test_persistence import _avatar_and_batch, _specs

PNG = b"\x89PNG\r\n\x1a\n" + b"an old premium piece" * 10


@pytest.fixture
def old_layout(studio_env, s3_server, s3_bucket, s3_private_bucket, monkeypatch):
    """Three pieces (capa1, capa2, capa3) stored as earlier versions did: all in the
    public content bucket, at keys made of their ids, premium rows with a signed link."""
    for name, value in r2_env(s3_server, s3_bucket, s3_private_bucket).items():
        monkeypatch.setenv(name, value)
    reload_settings()
    avatar_id = _avatar_and_batch("batch-old")
    specs = _specs("batch-old", 3)
    stored = []
    for spec in specs:
        key = f"avatars/{avatar_id}/batches/batch-old/{spec.piece_id}.png"
        s3_server.client().put_object(Bucket=s3_bucket, Key=key, Body=PNG + spec.tier.encode())
        url = f"{s3_server.public_url(s3_bucket)}/{key}"
        stored.append(
            StoredObject(
                piece_id=spec.piece_id,
                key=key,
                url=url if spec.tier == "capa1" else url + "?X-Amz-Signature=old",
                backend="r2",
                size=len(PNG) + 5,
                checksum=sha256_hex(PNG + spec.tier.encode()),
            )
        )
    with session_scope() as session:
        piece_progress.record_plan(session, avatar_id, "batch-old", specs)
        piece_progress.record_stored(session, stored)
    return {s.piece_id: s for s in stored}


def test_premium_pieces_move_to_the_private_bucket_once(
    old_layout, s3_server, s3_bucket, s3_private_bucket
) -> None:
    for obj in old_layout.values():
        assert httpx.get(f"{s3_server.public_url(s3_bucket)}/{obj.key}").status_code == 200

    dry = CliRunner().invoke(app, ["storage-privatize", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["moved"] == 2
    assert len(s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]) == 3

    moved = CliRunner().invoke(app, ["storage-privatize"])
    assert moved.exit_code == 0, moved.output
    assert json.loads(moved.output) == {
        "moved": 2, "already_private": 0, "missing": 0, "errors": []
    }
    with session_scope() as session:
        rows = {r.id: r for r in session.query(ContentPiece)}
    for piece_id, old in old_layout.items():
        row = rows[piece_id]
        public = httpx.get(f"{s3_server.public_url(s3_bucket)}/{old.key}").status_code
        if row.access_tier == "capa1":  # public by design: untouched
            assert (row.storage_key, row.url, public) == (old.key, old.url, 200)
            continue
        assert public in (403, 404)
        assert row.storage_key != old.key and piece_id not in row.storage_key
        assert row.url is None
        body = s3_server.client().get_object(Bucket=s3_private_bucket, Key=row.storage_key)
        assert sha256_hex(body["Body"].read()) == row.checksum
        anonymous = httpx.get(f"{s3_server.endpoint_url}/{s3_private_bucket}/{row.storage_key}")
        assert anonymous.status_code == 403

    again = CliRunner().invoke(app, ["storage-privatize"])
    assert json.loads(again.output) == {
        "moved": 0, "already_private": 2, "missing": 0, "errors": []
    }


def test_privatize_is_refused_while_a_public_url_has_no_private_bucket(
    old_layout, monkeypatch
) -> None:
    monkeypatch.delenv("R2_PRIVATE_BUCKET_NAME")
    reload_settings()
    refused = CliRunner().invoke(app, ["storage-privatize"])
    assert refused.exit_code == 2
    assert "R2_PRIVATE_BUCKET_NAME" in refused.output
