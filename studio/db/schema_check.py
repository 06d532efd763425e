"""Is the database the pipeline is pointed at initialised? One line saying what to do if not.

WHY (issue 16): two workers with their own STUDIO_HOME and no shared DATABASE_URL each
had an empty SQLite file; a submitted batch failed deep in a step with `no such table:
avatar`, after `batch submit` had checked the CLI's own file and accepted it. Every
entry point that needs the schema (the CLI's database commands, `batch submit`, the
flows' `validate` step, the maintenance flows) asks here first and is refused with one
line naming `DATABASE_URL` and `studio init`.

The check compares the database's Alembic revision (studio/db/migrations) with the
head this code ships. A SQLite file that does not exist is reported without connecting:
connecting would create an empty database file (in the current folder, for the default
`sqlite:///.studio/studio.db`). The URL is shown with its password hidden.

Callers:
- `require_schema()` raises `SchemaNotReady` (the flows turn it into a refusal);
- `schema_problem()` returns the line or None (health reports it as a component);
- cli/schema.py prints it and exits 1 for a CLI command.
"""

from __future__ import annotations

from pathlib import Path

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from studio.db.engine import get_engine, normalize_url
from studio.db.migrate import alembic_config
from studio.settings import Settings, get_settings

#: URLs found at head in this process: checked once, not before every session
_READY: set[str] = set()


class SchemaNotReady(RuntimeError):
    """The database has no studio schema, an older one, or cannot be reached."""


def shown_url(url: str) -> str:
    """`url` as it may be printed: the password replaced by `***`."""
    return make_url(normalize_url(url)).render_as_string(hide_password=True)


def head_revision() -> str | None:
    """The newest migration this code ships."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()
    return text[0] if text else type(cause).__name__


def schema_problem(settings: Settings | None = None) -> str | None:
    """None when the database is at the schema's head, else one line naming
    DATABASE_URL and `studio init`. Never creates a database file."""
    s = settings or get_settings()
    raw = s.resolved_database_url
    if raw in _READY:
        return None
    url = make_url(normalize_url(raw))
    where = f"database at {shown_url(raw)}"
    if url.password:
        where += " (password hidden)"
    if s.database_url:
        fix = "run `studio init` with this DATABASE_URL"
    else:
        where += " (DATABASE_URL not set: this host's own file)"
        fix = "run `studio init`, or set DATABASE_URL to the shared database"
    if url.get_backend_name() == "sqlite":
        path = url.database or ""
        if path and path != ":memory:" and not Path(path).exists():
            return f"no {where}: {fix}"
    try:
        with get_engine(s).connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        return f"cannot reach the {where}: {_first_line(exc)}; check DATABASE_URL"
    head = head_revision()
    if current is None:
        return f"{where} has no studio schema: {fix}"
    if current != head:
        return f"{where} is at schema revision {current}, not {head}: {fix}"
    _READY.add(raw)
    return None


def require_schema(settings: Settings | None = None) -> None:
    """Raise SchemaNotReady (its message the one line) unless the schema is at head."""
    problem = schema_problem(settings)
    if problem is not None:
        raise SchemaNotReady(problem)


def forget_checks() -> None:
    """Check again next time (tests, and `studio init` after it migrated)."""
    _READY.clear()
