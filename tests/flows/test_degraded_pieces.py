"""Degraded is not new: a piece whose image is a cached asset is labelled and held.

Real providers (the emulators) make the first batch's images, which become the avatar's
cached assets; then every provider fails, and the second batch can only reuse them.
"""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from studio.db.engine import session_scope
from studio.db.models import Batch, ContentPiece
from studio.outcomes import DEGRADED_REASON
from tests.tasks.conftest import emulators, provider_env  # noqa: F401 - fixtures

PIECES = 4


@pytest.fixture(autouse=True)
def _prefect(prefect_api) -> None:
    return None


async def _degraded_batch(emulators):  # noqa: F811
    from flows.content_batch import content_batch
    from studio.bootstrap import ensure_demo_avatar

    ensure_demo_avatar()
    fresh = await content_batch(avatar_id="demo", num_pieces=PIECES, seed=21)
    assert fresh.degraded == 0 and fresh.published == PIECES
    _cache_a_real_image_for_every_template(fresh)
    for emulator in emulators:
        emulator.behaviour.failure_rate = 1.0
    return await content_batch(avatar_id="demo", num_pieces=PIECES, seed=21)


def _cache_a_real_image_for_every_template(fresh) -> None:  # type: ignore[no-untyped-def]
    """The first batch's real image as the asset of every template (templates differ per
    batch), so that every piece of the next batch has a cached asset to fall back on."""
    from pathlib import Path

    from studio.catalog import template_library
    from tasks.generate_images import asset_cache

    with session_scope() as session:
        row = session.scalars(
            select(ContentPiece).where(ContentPiece.batch_id == fresh.batch_id)
        ).first()
        assert row is not None and row.image_info
    image = Path(row.url.removeprefix("file://"))  # stored; its staging went with the batch
    for template in template_library().all_templates():
        asset_cache().remember(fresh.avatar_id, template.id, image)


async def test_degraded_pieces_are_held_for_review_and_counted_apart(
    studio_env, provider_env, emulators, caplog  # noqa: F811
):
    caplog.set_level(logging.INFO)
    result = await _degraded_batch(emulators)
    assert result.degraded == PIECES
    assert result.published == 0
    assert result.pending_review == PIECES
    assert result.failed == 0
    for piece in result.pieces:
        assert piece.degraded and piece.provider == "cache"
        assert piece.status.value == "pending_review" and piece.reason == DEGRADED_REASON
        assert piece.url is None  # never uploaded: not reachable through any URL
    with session_scope() as session:
        rows = list(
            session.scalars(select(ContentPiece).where(ContentPiece.batch_id == result.batch_id))
        )
        batch = session.get(Batch, result.batch_id)
        assert batch is not None and batch.degraded == PIECES
    assert len(rows) == PIECES
    assert all(r.degraded and r.status == "pending_review" for r in rows)
    assert all(r.safety_rating == "pending_review" and r.storage_key is None for r in rows)
    assert f"Degraded images | Degraded: {PIECES} | Fresh: 0" in caplog.text
    assert f"Degraded pieces held for review | Count: {PIECES}" in caplog.text


async def test_degraded_pieces_are_published_when_allowed_and_still_labelled(
    studio_env, provider_env, emulators, monkeypatch  # noqa: F811
):
    from studio.settings import reload_settings

    monkeypatch.setenv("PUBLISH_DEGRADED", "true")
    reload_settings()
    result = await _degraded_batch(emulators)
    assert result.degraded == PIECES
    assert result.published == PIECES
    assert all(p.degraded and p.url for p in result.pieces)
    with session_scope() as session:
        rows = list(
            session.scalars(select(ContentPiece).where(ContentPiece.batch_id == result.batch_id))
        )
    assert all(r.degraded and r.status == "published" for r in rows)


async def test_degraded_label_is_in_the_artifact(
    studio_env, provider_env, emulators  # noqa: F811
):
    from prefect import get_client

    result = await _degraded_batch(emulators)
    async with get_client() as client:
        artifacts = await client.read_artifacts()
    mine = [
        a
        for a in artifacts
        if a.type == "table" and a.description and result.batch_id in a.description
    ]
    assert mine, "the batch's table artifact"
    assert f"{PIECES} degraded (cached image)" in (mine[0].description or "")
    rows = mine[0].data if isinstance(mine[0].data, list) else None
    if rows is None:  # stored as JSON text
        import json

        rows = json.loads(mine[0].data)  # type: ignore[arg-type]
    assert all(row["degraded"] == "degraded" for row in rows)
