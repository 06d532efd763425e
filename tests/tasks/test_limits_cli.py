"""`studio limits apply` / `show` against a real Prefect API and a real studio database.

Issue 20: `show` tells, per provider, the ceiling (*_MAX_CONCURRENT), the limit in force
on Prefect, the slots in use, an operator's manual cap and the last change; `apply`
puts the ceiling back, clears a manual cap and says so. The limit changes are made by
the fleet's own DB layer (studio/db/provider_pace.py `adjust`, what every batch process
runs) on Prefect's real limit, never written into the tables by hand.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings
from typer.testing import CliRunner

import deployments.concurrency_limits as concurrency_limits
from cli.app import app
from studio.db.engine import session_scope
from studio.db.provider_pace import adjust, limit_changes, lock_row, pace_row, utcnow
from studio.providers.aimd import Knobs, Succeeded, Throttled

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def test_limits_apply_then_show(monkeypatch):
    monkeypatch.setenv("REPLICATE_MAX_CONCURRENT", "7")
    applied = runner.invoke(app, ["limits", "apply"])
    assert applied.exit_code == 0, applied.output
    assert "provider:replicate" in applied.output
    shown = runner.invoke(app, ["limits", "show"])
    assert shown.exit_code == 0, shown.output
    line = next(x for x in shown.output.splitlines() if "provider:replicate" in x)
    assert "7" in line


class PrefectLimit:
    """`provider:<name>` on the test's Prefect API, as the fleet's LimitAccess reads it."""

    def __init__(self, client: SyncPrefectClient, provider: str) -> None:
        self.client, self.name = client, f"provider:{provider}"

    def read(self) -> int | None:
        try:
            return self.client.read_global_concurrency_limit_by_name(self.name).limit
        except ObjectNotFound:
            return None

    def write(self, limit: int) -> None:
        self.client.update_global_concurrency_limit(
            self.name, GlobalConcurrencyLimitUpdate(limit=limit)
        )

    def in_flight(self) -> int | None:
        return None  # not known: decreases start from the limit (5 -> 3)


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch) -> None:
    """The table as a terminal of 200 columns shows it (piped, rich squeezes it to 80)."""
    from cli.output import console

    monkeypatch.setattr(console, "_width", 200)


@pytest.fixture
def prefect() -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as client:
        yield client


@pytest.fixture
def fleet(studio_env, monkeypatch, prefect):
    """A studio database at head, ceilings 5 (Replicate) and 3 (Modal), no rates, and
    the limits applied as an operator would."""
    monkeypatch.setenv("REPLICATE_MAX_CONCURRENT", "5")
    monkeypatch.setenv("MODAL_MAX_CONCURRENT", "3")
    for variable in ("REPLICATE_RPS", "ANTHROPIC_RPM"):
        monkeypatch.delenv(variable, raising=False)
    applied = runner.invoke(app, ["limits", "apply"], catch_exceptions=False)
    assert applied.exit_code == 0, applied.output
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    for name in ("provider:replicate", "provider:modal"):  # leases an earlier test of this
        # shared API left (they expire in 60 s) are not this test's "in use"
        prefect.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
    return prefect


def decide(prefect: SyncPrefectClient, provider: str, event, ceiling: int | None = 5):
    """One AIMD decision of a batch process, on the real row and the real limit."""
    return adjust(provider, ceiling, event, Knobs(), PrefectLimit(prefect, provider),
                  sessions=session_scope)


def show_json() -> dict:
    shown = runner.invoke(app, ["limits", "show", "--json"], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    return json.loads(shown.stdout)


def row_of(shown: dict, name: str) -> dict:
    return next(r for r in shown["limits"] if r["name"] == name)


def table_line(output: str, name: str) -> str:
    return next(x for x in output.splitlines() if name in x)


def test_show_tells_a_throttle_with_ceiling_limit_and_retry_after(fleet) -> None:
    outcome = decide(fleet, "replicate", Throttled(429, 10.0))
    assert outcome.change is not None and outcome.change.to_limit == 3
    shown = runner.invoke(app, ["limits", "show"], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    assert "warning" not in shown.output
    line = table_line(shown.output, "provider:replicate")
    cells = [c.strip() for c in line.strip("│ ").split("│")]
    assert cells[:5] == ["provider:replicate", "5", "3", "0", "-"], cells
    assert re.fullmatch(
        r"5 -> 3 throttled [0-9]s ago, Retry-After 10s; calls held (10|[1-9])s more "
        r"\(Retry-After\)", cells[5]
    ), cells
    modal = [c.strip() for c in table_line(shown.output, "provider:modal").strip("│ ").split("│")]
    assert modal[:5] == ["provider:modal", "3", "3", "0", "-"]
    assert modal[5] == "none"  # applied at its ceiling: nothing to tell

    data = row_of(show_json(), "provider:replicate")
    assert (data["ceiling"], data["limit"], data["in_use"], data["manual_cap"]) == (5, 3, 0, None)
    change = data["last_change"]
    assert (change["from_limit"], change["to_limit"], change["reason"]) == (5, 3, "throttled")
    assert (change["status"], change["retry_after"]) == (429, 10.0)
    assert data["throttled_until"] is not None


def test_a_recovery_and_a_529_read_as_such(fleet) -> None:
    decide(fleet, "replicate", Throttled(529, None))
    with session_scope() as session:  # the quiet window passed (no waiting in a test)
        row = lock_row(session, "replicate")
        row.last_throttle_at = row.last_change_at = utcnow() - timedelta(seconds=60)
        row.last_throttle_limit = None
    decide(fleet, "replicate", Succeeded())
    data = row_of(show_json(), "provider:replicate")
    assert data["limit"] == 4
    assert data["last_change"]["text"].startswith("3 -> 4 recovered ")
    with session_scope() as session:
        first = pace_row(session, "replicate")
        assert first is not None and first.current == 4


def test_a_manual_cap_is_shown_then_cleared_by_apply(fleet) -> None:
    manual_cap_story(fleet)


@pytest.fixture
def pg_fleet(postgres_url, tmp_path, monkeypatch, prefect):
    """`fleet` on the real PostgreSQL (the row lock is `SELECT ... FOR UPDATE` there)."""
    from studio.db.engine import dispose_engines
    from tests.conftest import use_database
    from tests.infra.postgres import create_database

    use_database(monkeypatch, tmp_path / "studio", create_database(postgres_url))
    monkeypatch.setenv("REPLICATE_MAX_CONCURRENT", "5")
    monkeypatch.setenv("MODAL_MAX_CONCURRENT", "3")
    for variable in ("REPLICATE_RPS", "ANTHROPIC_RPM"):
        monkeypatch.delenv(variable, raising=False)
    assert runner.invoke(app, ["limits", "apply"], catch_exceptions=False).exit_code == 0
    yield prefect
    dispose_engines()


def test_a_manual_cap_is_cleared_on_postgresql(pg_fleet) -> None:
    manual_cap_story(pg_fleet)


def manual_cap_story(fleet: SyncPrefectClient) -> None:
    PrefectLimit(fleet, "replicate").write(2)  # the operator, on Prefect's Concurrency page
    before = row_of(show_json(), "provider:replicate")
    assert (before["limit"], before["manual_cap"]) == (2, 2)  # seen before the fleet noted it
    decide(fleet, "replicate", Throttled(429, None))  # the fleet's next change notes it first
    noted = row_of(show_json(), "provider:replicate")
    assert (noted["limit"], noted["manual_cap"]) == (1, 2)  # a throttle may go below it
    assert noted["last_change"]["text"].startswith("2 -> 1 throttled ")
    with session_scope() as session:
        reasons = [(c.from_limit, c.to_limit, c.reason)
                   for c in limit_changes(session, utcnow() - timedelta(minutes=1))
                   if c.provider == "replicate"]
    assert reasons[-2:] == [(5, 2, "manual"), (2, 1, "throttled")], reasons

    applied = runner.invoke(app, ["limits", "apply"], catch_exceptions=False)
    assert applied.exit_code == 0, applied.output
    assert "provider:replicate: updated (limit 1 -> 5); manual cap 2 cleared" in applied.output
    assert "Manual caps cleared: the fleet may raise replicate up to 5 again" in applied.output
    assert "provider:modal: unchanged (limit 3)" in applied.output
    after = row_of(show_json(), "provider:replicate")
    assert (after["limit"], after["manual_cap"]) == (5, None)
    assert after["last_change"]["text"].startswith("1 -> 5 applied ")
    with session_scope() as session:
        row = pace_row(session, "replicate")
        assert row is not None and (row.current, row.manual_cap, row.ceiling) == (5, None, 5)
    again = runner.invoke(app, ["limits", "apply"], catch_exceptions=False)
    assert "cleared" not in again.output
    assert "provider:replicate: unchanged (limit 5)" in again.output


def test_apply_lowers_nothing_the_fleet_has_on_its_way(fleet, monkeypatch) -> None:
    """A change another process wrote as pending (not yet on Prefect) is waited for:
    applying over it would let it land after the apply and read as a manual cap."""
    with session_scope() as session:
        row = lock_row(session, "replicate")
        row.pending_to, row.pending_at = 3, utcnow()

    def settle() -> None:  # what adjust's last two steps do, 0.5 s later
        time.sleep(0.5)
        with get_client(sync_client=True) as client:
            PrefectLimit(client, "replicate").write(3)
        with session_scope() as session:
            row = lock_row(session, "replicate")
            row.current, row.pending_to, row.pending_at = 3, None, None

    settler = threading.Thread(target=settle)
    settler.start()
    applied = runner.invoke(app, ["limits", "apply"], catch_exceptions=False)
    settler.join()
    assert applied.exit_code == 0, applied.output
    assert "provider:replicate: updated (limit 3 -> 5)" in applied.output
    assert "cleared" not in applied.output
    assert PrefectLimit(fleet, "replicate").read() == 5


def test_apply_over_a_dead_processes_pending_change(fleet, monkeypatch) -> None:
    """A pending change that never settles (its process died) does not hold apply up
    for longer than PENDING_WAIT_SECONDS; apply clears it."""
    monkeypatch.setattr(concurrency_limits, "PENDING_WAIT_SECONDS", 0.3)
    with session_scope() as session:
        row = lock_row(session, "replicate")
        row.pending_to, row.pending_at = 3, utcnow()
    applied = runner.invoke(app, ["limits", "apply"], catch_exceptions=False)
    assert applied.exit_code == 0, applied.output
    with session_scope() as session:
        row = pace_row(session, "replicate")
        assert row is not None and (row.current, row.pending_to) == (5, None)


def test_a_provider_without_a_limit_shows_its_retry_after(fleet) -> None:
    class NoLimit:
        def read(self) -> None:
            return None

        def write(self, limit: int) -> None:
            raise AssertionError("anthropic has no in-flight limit to write")

        def in_flight(self) -> None:
            return None

    adjust("anthropic", None, Throttled(529, 30.0), Knobs(), NoLimit(), sessions=session_scope)
    shown = runner.invoke(app, ["limits", "show"], catch_exceptions=False)
    line = table_line(shown.output, "anthropic")
    assert "no limit" in line and "calls held " in line
    data = row_of(show_json(), "anthropic")
    assert data["kind"] == "retry-after" and data["throttled_until"] is not None


def test_rate_limits_are_rows_of_their_own(fleet, monkeypatch) -> None:
    monkeypatch.setenv("REPLICATE_RPS", "2")
    applied = runner.invoke(app, ["limits", "apply"], catch_exceptions=False)
    assert "rate:replicate: created" in applied.output, applied.output
    shown = runner.invoke(app, ["limits", "show"], catch_exceptions=False)
    line = table_line(shown.output, "rate:replicate")
    assert "REPLICATE_RPS=2" in line and "2 (2/s)" in line
    assert "rate:anthropic" not in shown.output  # unset, none on the server: no row
    data = row_of(show_json(), "rate:replicate")
    assert (data["kind"], data["limit"], data["per_second"], data["configured"]) == (
        "rate", 2, 2.0, 2.0
    )
    monkeypatch.delenv("REPLICATE_RPS")
    stale = runner.invoke(app, ["limits", "show"], catch_exceptions=False)
    assert "stale (run `studio limits apply`)" in table_line(stale.output, "rate:replicate")
    removed = runner.invoke(app, ["limits", "apply"], catch_exceptions=False)
    assert "rate:replicate: deleted (REPLICATE_RPS unset)" in removed.output
    assert "rate:replicate" not in runner.invoke(app, ["limits", "show"]).output


@pytest.mark.parametrize(
    ("variable", "value"),
    [("REPLICATE_MAX_CONCURRENT", "0"), ("REPLICATE_RPS", "-1"), ("ANTHROPIC_RPM", "many")],
)
def test_a_bad_setting_exits_2_naming_it_and_changes_nothing(
    fleet, monkeypatch, variable, value
) -> None:
    PrefectLimit(fleet, "replicate").write(4)
    monkeypatch.setenv(variable, value)
    for command in ("apply", "show"):
        done = runner.invoke(app, ["limits", command], catch_exceptions=False)
        assert done.exit_code == 2, done.output
        lines = done.output.strip().splitlines()
        assert len(lines) == 1 and variable in lines[0], lines
    assert PrefectLimit(fleet, "replicate").read() == 4


def test_no_server_exits_1_in_one_line(fleet) -> None:
    closed = closed_api()
    with temporary_settings(updates={PREFECT_API_URL: closed}):
        for command in ("apply", "show"):
            down = runner.invoke(app, ["limits", command], catch_exceptions=False)
            assert down.exit_code == 1, down.output
            assert closed in down.output and "Traceback" not in down.output


def closed_api() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/api"


def test_without_a_database_prefect_is_still_shown_and_applied(
    tmp_path, monkeypatch, prefect
) -> None:
    from studio.db.engine import dispose_engines
    from studio.settings import reload_settings

    # a database that cannot be made: its folder is a file. (A folder that does not exist
    # yet is no test here: a lease census heartbeat an earlier test of this process left
    # running follows DATABASE_URL and may create it while this test runs.)
    blocker = tmp_path / "nowhere"
    blocker.write_text("not a folder")
    missing = blocker / "studio.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{missing}")
    dispose_engines()
    reload_settings()
    PrefectLimit(prefect, "replicate").write(2)
    shown = runner.invoke(app, ["limits", "show"], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    warnings = [x for x in shown.output.splitlines() if "warning" in x]
    assert len(warnings) == 1 and "studio init" in warnings[0], shown.output
    assert "no ceiling record, manual cap or history shown" in warnings[0]
    assert "provider:replicate" in shown.output
    data = json.loads(runner.invoke(app, ["limits", "show", "--json"]).stdout)
    assert data["database"] is False
    applied = runner.invoke(app, ["limits", "apply"], catch_exceptions=False)
    assert applied.exit_code == 0, applied.output
    assert "limits applied on Prefect only" in applied.output
    assert blocker.is_file()  # nothing made where the database is not
    assert PrefectLimit(prefect, "replicate").read() == 5
    closed = closed_api()
    with temporary_settings(updates={PREFECT_API_URL: closed}):  # and no server either
        for command in ("apply", "show"):
            down = runner.invoke(app, ["limits", command], catch_exceptions=False)
            assert down.exit_code == 1, down.output
            lines = [x for x in down.stderr.splitlines() if x.strip()]
            assert len(lines) == 1 and closed in lines[0], down.stderr
    dispose_engines()


def readme_limits_lines() -> list[str]:
    """The command lines of the README's "Provider limits that follow the providers"
    ```bash block."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### Provider limits that follow the providers\n", 1)[1]
    block = section.split("\n## ", 1)[0].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [re.split(r"\s+#\s", raw, maxsplit=1)[0].strip() for raw in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_the_readme_limits_commands_run_as_written(fleet) -> None:
    lines = readme_limits_lines()
    assert lines == [
        ".venv/bin/studio limits show",
        ".venv/bin/studio limits show --json",
        ".venv/bin/studio limits apply",
    ]
    decide(fleet, "replicate", Throttled(429, 10.0))
    env = {**os.environ, "PREFECT_API_URL": get_current_settings().api.url, "COLUMNS": "200"}
    outputs = []
    for line in lines:
        done = subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 0, f"{line}: {done.stdout}{done.stderr}"
        assert "warning" not in done.stderr, done.stderr  # the test's database was found
        outputs.append(done.stdout)
    assert "5 -> 3 throttled" in table_line(outputs[0], "provider:replicate")
    assert row_of(json.loads(outputs[1]), "provider:replicate")["limit"] == 3
    assert "provider:replicate: updated (limit 3 -> 5)" in outputs[2]
