"""The storage commands of the `studio` CLI: seed-history and keyset-paged listing."""

from __future__ import annotations

import re

from sqlalchemy import func, select
from typer.testing import CliRunner

from cli.app import app
from studio.db.engine import session_scope
from studio.db.models import ContentPiece


def test_seed_history_then_page_through_the_listing(studio_env) -> None:
    runner = CliRunner()
    seeded = runner.invoke(app, ["seed-history", "--pieces", "300", "--avatars", "5"])
    assert seeded.exit_code == 0, seeded.output
    flagship = re.search(r"most active: ([0-9a-f-]{36})", seeded.output.replace("\n", ""))
    assert flagship
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(ContentPiece)) == 300

    first = runner.invoke(app, ["pieces", "--avatar", flagship.group(1), "--page-size", "5"])
    assert first.exit_code == 0, first.output
    token = re.search(r"next page: --after '([^']+)'", first.output)
    assert token
    second = runner.invoke(
        app, ["pieces", "--avatar", flagship.group(1), "--page-size", "5", "--after", token[1]]
    )
    assert second.exit_code == 0
    assert "next page" in second.output


def test_pieces_of_an_unknown_avatar_is_refused(studio_env) -> None:
    result = CliRunner().invoke(app, ["pieces", "--avatar", "nobody"])
    assert result.exit_code == 2
    assert "no avatar" in result.output
