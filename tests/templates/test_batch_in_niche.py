"""A batch run by the pipeline keeps to its avatar's niche: an avatar of a niche a studio
imported gets only that niche's templates, every prompt its own (issue 18 part 5)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cli.app import app
from flows.content_batch import content_batch
from studio.avatars import add_avatar
from studio.db.engine import session_scope
from studio.db.models import ContentPiece

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "templates.yaml"


@pytest.fixture(autouse=True)
def _prefect(prefect_api) -> None:
    return None


async def test_an_imported_niche_batch_uses_only_its_templates(studio_env) -> None:
    imported = CliRunner().invoke(app, ["templates", "import", str(EXAMPLE)])
    assert imported.exit_code == 0, imported.output
    with session_scope() as session:
        add_avatar(session, "zen", "yoga", "https://w.example/zen.safetensors", "daily")

    result = await content_batch(avatar_id="zen", num_pieces=50, seed=5)

    with session_scope() as session:
        rows = list(
            session.scalars(select(ContentPiece).where(ContentPiece.batch_id == result.batch_id))
        )
    assert len(rows) == 50
    assert {r.template_id.rsplit("-", 1)[0] for r in rows} == {"acme-yoga"}
    assert len({r.prompt for r in rows}) == 50
    assert all("{" not in r.prompt for r in rows)
