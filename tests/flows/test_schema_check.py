"""Issue 16: a database without the studio schema is refused in one line naming
DATABASE_URL and `studio init` (studio/db/schema_check.py), by the CLI's database
commands and `health` (exit 1, no empty SQLite file left behind), `batch submit` before
it sends anything, the batch's `validate` step, the scheduled fan-out, the storage sync
and the crash recovery; the health report's database check says it.

Real databases: a fresh PostgreSQL database (no schema, or migrated only to an older
revision), a SQLite path that does not exist; the flows on the temporary Prefect API.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from studio.db.schema_check import SchemaNotReady, head_revision, require_schema, schema_problem

BIN = Path(sys.executable).parent


@pytest.fixture
def empty_database(postgres_url, tmp_path, monkeypatch) -> str:
    """DATABASE_URL of a fresh PostgreSQL database with no schema, for this process."""
    from studio.db.engine import dispose_engines
    from studio.settings import reload_settings
    from tests.infra.postgres import create_database

    url = create_database(postgres_url)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path / "studio"))
    monkeypatch.setenv("LOG_FILE", str(tmp_path / "studio" / "app.log"))
    dispose_engines()
    reload_settings()
    yield url
    dispose_engines()
    reload_settings()


def _says_what_to_do(line: str) -> None:
    assert "\n" not in line.strip(), line
    assert "DATABASE_URL" in line and "`studio init`" in line, line


def test_a_database_without_the_schema_is_one_line_with_the_password_hidden(
    empty_database,
) -> None:
    problem = schema_problem()
    assert problem is not None and "has no studio schema" in problem
    _says_what_to_do(problem)
    password = make_url(empty_database).password
    if password:
        assert str(password) not in problem and "(password hidden)" in problem
    with pytest.raises(SchemaNotReady):
        require_schema()


def test_a_password_in_the_url_is_never_shown(postgres_url, monkeypatch, tmp_path) -> None:
    from studio.db.engine import dispose_engines
    from studio.settings import reload_settings

    url = make_url(postgres_url).set(password="s3cret-in-url", database="nowhere_db")
    monkeypatch.setenv("DATABASE_URL", url.render_as_string(hide_password=False))
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path))
    dispose_engines()
    problem = schema_problem(reload_settings())
    dispose_engines()
    reload_settings()
    assert problem is not None and "s3cret-in-url" not in problem, problem
    assert "(password hidden)" in problem and "DATABASE_URL" in problem, problem


def test_a_database_at_an_older_revision_names_both_revisions(empty_database) -> None:
    from alembic import command

    from studio.db.engine import get_engine
    from studio.db.migrate import alembic_config

    config = alembic_config()
    with get_engine().begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0005")
    problem = schema_problem()
    assert problem is not None, "an old schema passed"
    assert f"at schema revision 0005, not {head_revision()}" in problem
    _says_what_to_do(problem)


def test_an_initialised_database_passes(studio_env) -> None:
    assert schema_problem() is None
    require_schema()


def _studio(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    import os

    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "STUDIO_HOME", "LOG_FILE")}
    return subprocess.run([str(BIN / "studio"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("command", [
    ("avatar", "list"),
    ("avatar", "add", "nova", "--niche", "fitness"),
    ("batch", "submit", "--avatar", "nova", "--pieces", "1"),
    ("batch", "run", "--avatar", "nova", "--pieces", "1"),
    ("stats", "--avatar", "nova"),
    ("pieces", "--avatar", "nova"),
    ("health",),
])
def test_a_command_before_studio_init_is_one_line_exit_1_and_makes_no_file(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """Run where an operator would on a fresh clone: no DATABASE_URL, the default
    SQLite file in the current folder. Nothing is sent, nothing created."""
    done = _studio(tmp_path, *command)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    _says_what_to_do(lines[0])
    assert "Traceback" not in done.stdout + done.stderr
    assert list(tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))  # no empty database


def test_help_is_not_refused(tmp_path: Path) -> None:
    done = _studio(tmp_path, "avatar", "add", "--help")
    assert done.returncode == 0 and "Usage" in done.stdout, done.stderr


def test_batch_submit_against_a_database_without_the_schema_sends_nothing(
    empty_database, tmp_path: Path
) -> None:
    """`batch submit` with DATABASE_URL set to a database nobody initialised: one line,
    exit 1, and no Prefect API is even asked (none runs at the URL given)."""
    import os

    env = {**os.environ, "DATABASE_URL": empty_database,
           "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    done = subprocess.run([str(BIN / "studio"), "batch", "submit", "--avatar", "nova",
                           "--pieces", "1"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "has no studio schema" in lines[0], done.stderr
    _says_what_to_do(lines[0])
    assert "127.0.0.1:9" not in done.stderr  # refused before the API was called


def test_the_validate_step_refuses_a_batch_in_one_line(empty_database) -> None:
    from studio.request import BatchRequest
    from tasks.validate import BatchRefusal, validate_batch

    refusal = validate_batch.fn(BatchRequest(avatar_id="nova", num_pieces=1))
    assert isinstance(refusal, BatchRefusal) and refusal.field == "DATABASE_URL"
    _says_what_to_do(refusal.message)


async def test_a_content_batch_run_ends_refused(empty_database) -> None:
    from flows.content_batch import content_batch

    state = await content_batch(avatar_id="nova", num_pieces=1, return_state=True)
    assert state.is_failed() and state.name == "Refused", state
    assert state.message.startswith("DATABASE_URL: ") and "studio init" in state.message


async def test_the_scheduled_fan_out_ends_refused(empty_database) -> None:
    from flows.scheduled import scheduled_batches

    state = await scheduled_batches(cadence="daily", return_state=True)
    assert state.is_failed() and state.name == "Refused", state
    _says_what_to_do(state.message)


def test_the_storage_sync_ends_refused(empty_database) -> None:
    from flows.storage_sync import storage_sync

    state = storage_sync(return_state=True)
    assert state.is_failed() and state.name == "Refused", state
    _says_what_to_do(state.message)


async def test_the_crash_recovery_ends_refused(empty_database) -> None:
    from flows.crash_recovery import crash_recovery

    state = await crash_recovery(return_state=True)
    assert state.is_failed() and state.name == "Refused", state
    _says_what_to_do(state.message)


def test_the_health_report_names_the_missing_schema(empty_database) -> None:
    from studio.health import database_check
    from studio.settings import get_settings

    check = database_check(get_settings())
    assert check["status"] == "unhealthy"
    _says_what_to_do(check["error"])


async def test_a_resume_on_a_database_without_the_schema_ends_refused(empty_database) -> None:
    """A resume reads the stored request before `validate`: refused there the same way."""
    import uuid

    from flows.content_batch import content_batch

    state = await content_batch(avatar_id="nova", resume_batch_id=str(uuid.uuid4()),
                                return_state=True)
    assert state.is_failed() and state.name == "Refused", state
    assert state.message.startswith("DATABASE_URL: ") and "studio init" in state.message
