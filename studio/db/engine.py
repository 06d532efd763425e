"""One engine per database URL, pooled as the spec's "Connection Pooling" describes.

SQLite (the embedded default) gets a file lock timeout instead of a queue pool, since
its connections are cheap and writes serialize on the file anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from studio.db.pool import connect_with_retry
from studio.settings import Settings, get_settings


def normalize_url(url: str) -> str:
    """Point plain postgres URLs at psycopg 3, the driver we ship."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


_ENGINES: dict[tuple[str, int, int, int, float], Engine] = {}
#: background threads (the provider pace keeper, the lease census) open engines too: one
#: engine per key, and a dispose never iterates the dict while another thread adds to it
_ENGINES_LOCK = threading.Lock()


def _engine_for(
    url: str, pool_size: int, max_overflow: int, recycle: int, timeout: float
) -> Engine:
    key = (url, pool_size, max_overflow, recycle, timeout)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = _create_engine(*key)
        return _ENGINES[key]


def _create_engine(
    url: str, pool_size: int, max_overflow: int, recycle: int, timeout: float
) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_recycle=recycle,
        pool_timeout=timeout,
        pool_pre_ping=True,
    )


def get_engine(settings: Settings | None = None) -> Engine:
    s = settings or get_settings()
    return _engine_for(
        s.resolved_database_url,
        s.db_pool_size,
        s.db_max_overflow,
        s.db_pool_recycle,
        s.db_pool_timeout,
    )


def dispose_engines() -> None:
    """Close every pooled connection; tests call it between databases."""
    with _ENGINES_LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for engine in engines:
        engine.dispose()


@contextmanager
def session_scope(settings: Settings | None = None) -> Iterator[Session]:
    """A session that commits on success and always returns its connection to the pool."""
    session = sessionmaker(get_engine(settings), expire_on_commit=False)()
    try:
        connect_with_retry(session)  # full pool: short retry, then a clear PoolExhausted
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
