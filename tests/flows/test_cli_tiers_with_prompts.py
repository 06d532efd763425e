"""`--tiers` with `--prompt` is refused, not silently ignored (issue 16): custom prompts
take their tier from `--tier`, capa1 by default, as the run form now says."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from cli.app import app
from studio.db.engine import session_scope
from studio.db.models import Batch

runner = CliRunner()
PROMPT_WITH_TIERS = ["--avatar", "demo", "--pieces", "1", "--prompt", "beach run",
                     "--tiers", "0.5,0.3,0.2"]


@pytest.mark.parametrize("command", ["run", "submit"])
def test_tiers_with_prompt_exits_2_in_one_line(studio_env, demo_avatar, command) -> None:
    result = runner.invoke(app, ["batch", command, *PROMPT_WITH_TIERS], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, lines
    assert "--tiers" in lines[0] and "--tier" in lines[0] and "Traceback" not in result.output
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 0


def test_prompts_without_tier_are_capa1_and_tiers_alone_still_work(
    studio_env, demo_avatar
) -> None:
    custom = runner.invoke(
        app,
        ["batch", "run", "--avatar", "demo", "--pieces", "2", "--prompt", "a calm lake",
         "--prompt", "city walk at dusk", "--no-hooks", "--no-upload"],
        catch_exceptions=False,
    )
    assert custom.exit_code == 0, custom.output
    from studio.db.models import ContentPiece

    with session_scope() as session:
        tiers = session.scalars(select(ContentPiece.access_tier)).all()
    assert sorted(tiers) == ["capa1", "capa1"]
    templates = runner.invoke(
        app,
        ["batch", "run", "--avatar", "demo", "--pieces", "2", "--tiers", "0.5,0.5,0",
         "--no-hooks", "--no-upload"],
        catch_exceptions=False,
    )
    assert templates.exit_code == 0, templates.output
