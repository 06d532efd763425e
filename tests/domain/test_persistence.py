"""Schema, migrations and persistence, on SQLite and on a real PostgreSQL alike."""

from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select

from studio.avatars import add_avatar, resolve_avatar
from studio.db.engine import get_engine, session_scope
from studio.db.models import Base, Batch, ContentPiece
from studio.request import BatchRequestError
from studio.stats import avatar_stats
from tasks.save import _upsert

SPEC_INDEXES = {
    "idx_content_piece_avatar_id",
    "idx_content_piece_access_tier",
    "idx_content_piece_safety_rating",
    "idx_content_piece_created_at",
    "idx_content_piece_avatar_created",
}


def test_migrations_match_models(any_database) -> None:
    with get_engine().connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_spec_indexes_exist(any_database) -> None:
    names = {ix["name"] for ix in inspect(get_engine()).get_indexes("content_piece")}
    assert names >= SPEC_INDEXES


def test_templates_loaded(any_database) -> None:
    from studio.db.models import Template

    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Template)) >= 60


def _piece(avatar_id: str, batch_id: str, tier: str, status: str = "published") -> dict:
    return {
        "id": str(uuid.uuid4()),
        "avatar_id": avatar_id,
        "batch_id": batch_id,
        "template_id": "fitness-001",
        "prompt": "p",
        "access_tier": tier,
        "hook_text": "h",
        "safety_rating": "approved",
        "status": status,
        "provider": "preview",
        "storage_key": "k",
        "url": "u",
        "cost_usd": 0.01,
        "stand_ins": ["image:preview"],
    }


def test_upsert_is_idempotent_and_stats_aggregate(any_database) -> None:
    with session_scope() as session:
        avatar = add_avatar(session, "nova", "fitness", "https://w.example/l.safetensors")
        avatar_id = avatar.id
        session.add(
            Batch(
                id="b1",
                avatar_id=avatar_id,
                config={},
                requested=3,
                step_seconds={},
                cost_breakdown={},
                stand_ins=[],
            )
        )
    rows = [_piece(avatar_id, "b1", t) for t in ("capa1", "capa1", "capa2")]
    for _ in range(2):  # a retried save writes the same rows again
        with session_scope() as session:
            session.execute(_upsert(ContentPiece.__table__, rows))
    with session_scope() as session:
        stats = avatar_stats(session, avatar_id)
    assert stats["total_pieces"] == 3
    assert stats["by_tier"] == {"capa1": 2, "capa2": 1}
    assert stats["pieces_cost_usd"] == pytest.approx(0.03)


def test_avatar_without_lora_is_refused(any_database) -> None:
    with session_scope() as session:
        add_avatar(session, "nolora", "travel", None)
    with session_scope() as session, pytest.raises(BatchRequestError) as exc:
        resolve_avatar(session, "nolora")
    assert exc.value.field == "avatar_id"
    assert "lora_weights_url" in exc.value.message


def test_duplicate_avatar_name_refused(any_database) -> None:
    with session_scope() as session:
        add_avatar(session, "twin", "food", "https://w.example/l.safetensors")
    with session_scope() as session, pytest.raises(BatchRequestError):
        add_avatar(session, "twin", "food", "https://w.example/l.safetensors")
