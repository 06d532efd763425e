"""The operator's day-to-day commands (issue 16): `batch list`, `avatar update/remove`,
`--json` output, captions in `pieces`, `seed-history`'s refusal, and one-line errors
(exit 2 for bad input, nothing written).

Real SQLite database, a real Prefect API (the session's test server), real batches.
"""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from cli.app import app
from studio.db.engine import session_scope
from studio.db.models import Avatar, Batch

runner = CliRunner()
LORA = "https://weights.example.org/nova.safetensors"


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def one_line_error(result, code: int, *words: str) -> str:  # type: ignore[no-untyped-def]
    """The result is a refusal: exit `code`, ONE non-empty line, naming `words`."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _run_batch(pieces: int = 2) -> str:
    ran = invoke("batch", "run", "--avatar", "demo", "--pieces", str(pieces), "--seed", "3")
    assert ran.exit_code == 0, ran.output
    return re.search(r"batch ([0-9a-f-]{36})", ran.output)[1]


# --- avatar update / remove -------------------------------------------------------


def test_avatar_added_without_lora_gets_one_by_update_and_can_then_run(studio_env) -> None:
    assert invoke("avatar", "add", "nova", "--niche", "fitness").exit_code == 0
    refused = invoke("batch", "run", "--avatar", "nova", "--pieces", "1")
    one_line_error(refused, 2, "avatar_id", "lora")
    updated = invoke("avatar", "update", "nova", "--lora", LORA, "--cadence", "weekly")
    assert updated.exit_code == 0, updated.output
    assert "lora_weights_url" in updated.output and "cadence" in updated.output
    with session_scope() as session:
        nova = session.scalar(select(Avatar).where(Avatar.name == "nova"))
        assert nova.lora_weights_url == LORA and nova.cadence == "weekly"
    ran = invoke("batch", "run", "--avatar", "nova", "--pieces", "1")
    assert ran.exit_code == 0, ran.output


def test_avatar_update_renames_by_id_and_keeps_the_id(studio_env) -> None:
    invoke("avatar", "add", "nova", "--niche", "fitness", "--lora", LORA)
    with session_scope() as session:
        avatar_id = session.scalar(select(Avatar.id).where(Avatar.name == "nova"))
    result = invoke("avatar", "update", avatar_id, "--name", "nova2", "--niche", "Travel")
    assert result.exit_code == 0, result.output
    with session_scope() as session:
        avatar = session.get(Avatar, avatar_id)
        assert (avatar.name, avatar.niche) == ("nova2", "travel")


@pytest.mark.parametrize(
    "args, field",
    [
        (["--lora", "not a url"], "lora"),
        (["--lora", "file:///etc/passwd"], "lora"),
        (["--name", ""], "name"),
        (["--name", "   "], "name"),
        (["--name", " nova "], "name"),
        (["--name", "taken"], "name"),
        (["--niche", ""], "niche"),
        (["--niche", "a\nb"], "niche"),
        (["--cadence", "hourly"], "cadence"),
        ([], "options"),
    ],
)
def test_avatar_update_refuses_bad_values_in_one_line_and_changes_nothing(
    studio_env, args, field
) -> None:
    invoke("avatar", "add", "nova", "--niche", "fitness", "--lora", LORA)
    invoke("avatar", "add", "taken", "--niche", "food")
    one_line_error(invoke("avatar", "update", "nova", *args), 2, field)
    with session_scope() as session:
        nova = session.scalar(select(Avatar).where(Avatar.name == "nova"))
        assert (nova.niche, nova.lora_weights_url, nova.cadence) == ("fitness", LORA, "daily")


@pytest.mark.parametrize(
    "args, field",
    [
        (["", "--niche", "food"], "name"),
        (["   ", "--niche", "food"], "name"),
        (["ok", "--niche", "food", "--lora", "not a url"], "lora"),
        (["ok", "--niche", "  "], "niche"),
    ],
)
def test_avatar_add_refuses_empty_names_and_non_urls_in_one_line(studio_env, args, field) -> None:
    one_line_error(invoke("avatar", "add", *args), 2, field)
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Avatar)) == 0


def test_avatar_update_and_remove_of_an_unknown_avatar_exit_2(studio_env) -> None:
    one_line_error(invoke("avatar", "update", "ghost", "--active"), 2, "avatar", "ghost")
    one_line_error(invoke("avatar", "remove", "ghost"), 2, "avatar", "ghost")


def test_avatar_remove_deactivates_keeps_history_and_schedules_skip_it(
    studio_env, demo_avatar
) -> None:
    from studio.avatars import list_avatars

    batch_id = _run_batch()
    removed = invoke("avatar", "remove", "demo")
    assert removed.exit_code == 0, removed.output
    assert "deactivated" in removed.output and "kept" in removed.output
    with session_scope() as session:
        assert session.get(Batch, batch_id) is not None  # history kept
        demo = session.get(Avatar, demo_avatar)
        assert demo is not None and demo.active is False
        assert demo_avatar not in [a.id for a in list_avatars(session, active_only=True)]
    again = invoke("avatar", "remove", "demo")
    assert again.exit_code == 0 and "already inactive" in again.output
    assert invoke("avatar", "update", "demo", "--active").exit_code == 0
    with session_scope() as session:
        assert session.get(Avatar, demo_avatar).active is True


# --- batch list -------------------------------------------------------------------


def test_batch_list_newest_first_with_filters_and_json(studio_env, demo_avatar) -> None:
    first, second = _run_batch(2), _run_batch(1)
    invoke("avatar", "add", "other", "--niche", "food", "--lora", LORA)
    listed = invoke("batch", "list")
    assert listed.exit_code == 0, listed.output
    assert listed.output.index(second) < listed.output.index(first)  # newest first
    as_json = json.loads(invoke("batch", "list", "--json").output)
    assert [b["batch_id"] for b in as_json] == [second, first]
    newest = as_json[0]
    assert newest["avatar"] == "demo" and newest["status"] == "completed"
    assert newest["requested"] == 1 and newest["published"] == 1
    assert newest["run_id"] == second and newest["started_at"]
    from studio.db.engine import session_scope as scope
    from studio.ledger.totals import batch_cost

    with scope() as session:
        assert newest["cost_usd"] == pytest.approx(batch_cost(session, second).total_usd)
    assert json.loads(invoke("batch", "list", "--avatar", "other", "--json").output) == []
    assert len(json.loads(invoke("batch", "list", "--status", "completed", "--json").output)) == 2
    assert json.loads(invoke("batch", "list", "--status", "failed", "--json").output) == []
    assert len(json.loads(invoke("batch", "list", "--since", "1h", "--json").output)) == 2
    future = json.loads(invoke("batch", "list", "--since", "2999-01-01", "--json").output)
    assert future == []
    assert len(json.loads(invoke("batch", "list", "--limit", "1", "--json").output)) == 1


@pytest.mark.parametrize(
    "args, field",
    [
        (["--status", "bogus"], "status"),
        (["--since", "garbage"], "since"),
        (["--since", "7x"], "since"),
        (["--avatar", "ghost"], "avatar"),
        (["--avatar", ""], "avatar"),
    ],
)
def test_batch_list_bad_filters_exit_2_in_one_line(studio_env, args, field) -> None:
    one_line_error(invoke("batch", "list", *args), 2, field)


# --- pieces, stats ---------------------------------------------------------------


def test_pieces_show_captions_and_json(studio_env, demo_avatar) -> None:
    batch_id = _run_batch(2)
    data = json.loads(invoke("pieces", "--avatar", "demo", "--json").output)
    assert len(data["pieces"]) == 2 and data["next_cursor"] is None
    captions = [p["caption"] for p in data["pieces"]]
    assert all(captions) and all(p["batch_id"] == batch_id for p in data["pieces"])
    table = invoke("pieces", "--avatar", "demo")
    assert "caption" in table.output
    # a narrow terminal wraps a caption over several rows of its column (with the other
    # columns' cells between its words), so look for its words, not its text
    cells = set(table.output.replace("│", " ").split())
    assert any(all(word in cells for word in c.split()[:3]) for c in captions), table.output


def test_pieces_page_through_with_the_json_cursor(studio_env, demo_avatar) -> None:
    _run_batch(3)
    first = json.loads(invoke("pieces", "--avatar", "demo", "--page-size", "2", "--json").output)
    assert len(first["pieces"]) == 2 and first["next_cursor"]
    rest = json.loads(
        invoke("pieces", "--avatar", "demo", "--json", "--after", first["next_cursor"]).output
    )
    assert len(rest["pieces"]) == 1
    assert {p["id"] for p in rest["pieces"]}.isdisjoint(p["id"] for p in first["pieces"])


@pytest.mark.parametrize("cursor", ["garbage", "2026-13-45|x", "2026-12-01T00:00:00", "|abc"])
def test_pieces_bad_cursor_exits_2_in_one_line(studio_env, demo_avatar, cursor) -> None:
    one_line_error(invoke("pieces", "--avatar", "demo", "--after", cursor), 2, "after")


@pytest.mark.parametrize("command", [["pieces"], ["stats"]])
def test_empty_avatar_is_one_line_exit_2(studio_env, command) -> None:
    one_line_error(invoke(*command, "--avatar", ""), 2, "avatar")


def test_batch_run_with_an_empty_avatar_is_one_line_exit_2(studio_env) -> None:
    one_line_error(invoke("batch", "run", "--avatar", ""), 2, "avatar")


def test_stats_json_is_plain_json(studio_env, demo_avatar) -> None:
    _run_batch(2)
    result = invoke("stats", "--avatar", "demo", "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["batches"] == 1 and "billed" in figures


# --- seed-history -----------------------------------------------------------------


def test_seed_history_refuses_a_database_with_real_avatars(studio_env, demo_avatar) -> None:
    refused = invoke("seed-history", "--pieces", "50", "--avatars", "2")
    one_line_error(refused, 2, "database", "demo", "--into-non-empty")
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Avatar)) == 1
        assert session.scalar(select(func.count()).select_from(Batch)) == 0
    seeded = invoke("seed-history", "--pieces", "50", "--avatars", "2", "--into-non-empty")
    assert seeded.exit_code == 0, seeded.output
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Avatar)) == 3


def test_seeded_avatars_are_inactive_and_a_second_seed_is_allowed(studio_env) -> None:
    from studio.avatars import list_avatars

    assert invoke("seed-history", "--pieces", "60", "--avatars", "3").exit_code == 0
    # a database holding only seeded history is still a benchmark database
    assert invoke("seed-history", "--pieces", "60", "--avatars", "3", "--seed", "2").exit_code == 0
    with session_scope() as session:
        avatars = list_avatars(session)
        assert len(avatars) == 6 and not any(a.active for a in avatars)
        assert list_avatars(session, cadence="daily", active_only=True) == []


# --- errors no command expected ---------------------------------------------------


def test_an_unexpected_error_is_one_line_exit_1(monkeypatch, capsys) -> None:
    """The console script turns an exception no command handled into one line (exit 1);
    STUDIO_DEBUG=1 adds the traceback."""
    import cli.app
    import cli.entry

    def broken() -> None:
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(cli.app, "app", broken)
    monkeypatch.setattr(cli.entry, "_exit_without_teardown", lambda code: None)
    monkeypatch.setattr("sys.argv", ["studio", "avatar", "list"])
    monkeypatch.delenv("STUDIO_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exited:
        cli.entry.main()
    assert exited.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["error RuntimeError: disk on fire second line (STUDIO_DEBUG=1 shows the "
                     "traceback)"]
    monkeypatch.setenv("STUDIO_DEBUG", "1")
    with pytest.raises(SystemExit):
        cli.entry.main()
    assert "Traceback" in capsys.readouterr().err


def test_batch_status_of_a_non_uuid_is_one_line_exit_2(studio_env) -> None:
    one_line_error(invoke("batch", "status", "garbage"), 2, "id", "UUID")
    one_line_error(invoke("batch", "resume", "garbage"), 2, "batch_id")


def test_since_takes_ages_dates_and_offsets_in_utc() -> None:
    from datetime import UTC, datetime, timedelta

    from cli.batch_list import parse_since

    now = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("12h", now) == now - timedelta(hours=12)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("2026-12-01") == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_since("2026-12-01T08:00+02:00") == datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
    assert parse_since(None) is None
