"""The `studio` command as an operator uses it: exit 2 and a named field for bad input,
nothing written; a batch with a progress bar and a summary for good input."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from cli.app import app
from studio.db.engine import session_scope
from studio.db.models import Batch, ContentPiece

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    "args, field",
    [
        (["--avatar", "ghost"], "avatar_id"),
        (["--avatar", "demo", "--pieces", "0"], "num_pieces"),
        (["--avatar", "demo", "--pieces", "501"], "num_pieces"),
        (["--avatar", "demo", "--tiers", "0.5,0.3,0.1"], "tier_distribution"),
        (["--avatar", "demo", "--tiers", "1.2,-0.1,-0.1"], "tier_distribution"),
        (["--avatar", "demo", "--tiers", "half,half"], "tier_distribution"),
        (["--avatar", "demo", "--platform", "myspace"], "platform"),
        (["--avatar", "demo", "--pieces", "2", "--prompt", "one"], "custom_prompts"),
        (["--avatar", "demo", "--pieces", "1", "--prompt", "a", "--tier", "gold"], "custom_tiers"),
        (["--avatar", "untrained"], "avatar_id"),
        (["--avatar", "demo", "--hook-mode", "cheap"], "hook_mode"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(studio_env, demo_avatar, args, field) -> None:
    invoke("avatar", "add", "untrained", "--niche", "food")
    result = invoke("batch", "run", *args)
    assert result.exit_code == 2, result.output
    assert field in result.output
    assert "Traceback" not in result.output
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 0
        assert session.scalar(select(func.count()).select_from(ContentPiece)) == 0
    assert not studio_env.work_dir.exists() or not any(studio_env.work_dir.rglob("*.png"))


def test_avatar_add_list_and_bad_cadence(studio_env) -> None:
    assert (
        invoke("avatar", "add", "nova", "--niche", "Fitness", "--lora", "https://w/l").exit_code
        == 0
    )
    listing = invoke("avatar", "list")
    assert "nova" in listing.output and "fitness" in listing.output
    bad = invoke("avatar", "add", "x", "--niche", "food", "--cadence", "hourly")
    assert bad.exit_code == 2 and "cadence" in bad.output


def test_batch_run_stats_and_health(studio_env, demo_avatar) -> None:
    result = invoke("batch", "run", "--avatar", "demo", "--pieces", "4", "--platform", "tiktok")
    assert result.exit_code == 0, result.output
    assert "published" in result.output and "stand-ins used" in result.output
    stats = invoke("stats", "--avatar", "demo")
    assert json.loads(stats.output)["total_pieces"] == 4
    health = invoke("health")
    report = json.loads(health.output)
    assert report["checks"]["database"]["status"] == "healthy"
    assert report["checks"]["database"]["content_pieces"] == 4
    cache = report["template_library"]["cache_performance"]
    assert set(cache) == {"total_calls", "cache_hits", "cache_misses", "hit_rate_percent"}
    assert "r2_storage" in report["checks"] and "providers" in report["checks"]
