"""Database at scale: 1,000,000 pieces across 200 avatars on PostgreSQL.

Prints, as median milliseconds over --repeat runs, for the most active avatar:
statistics (one aggregate query, and the CLI's `avatar_stats` with batch totals), the 1st and
the 500th page of its listing (keyset; and the 500th by OFFSET, the spec's example, for
comparison) and a bulk status update of 500 pieces (one statement, one commit); then the
same with the spec's indexes (and every other secondary index on content_piece) dropped,
in the same run. Targets on this machine: stats < 50 ms, any page < 10 ms.

    .venv/bin/python bench/bench_db.py                    # embedded PostgreSQL, 1M pieces
    .venv/bin/python bench/bench_db.py --pieces 200000    # quicker
    .venv/bin/python bench/bench_db.py --database-url postgresql://...   # an existing server
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, create_engine, select, text  # noqa: E402
from sqlalchemy.orm import Session, sessionmaker  # noqa: E402

from studio.db.engine import normalize_url  # noqa: E402
from studio.db.migrate import upgrade_to_head  # noqa: E402
from studio.db.models import ContentPiece  # noqa: E402
from studio.db.queries import (  # noqa: E402
    PageCursor,
    avatar_summary,
    bulk_set_status,
    list_pieces,
)
from studio.db.seed import seed_history  # noqa: E402
from studio.stats import avatar_stats  # noqa: E402

PAGE = 20
TARGET_PAGE = 500


def _secondary_indexes(engine: Engine) -> dict[str, str]:
    """name -> CREATE INDEX statement, for every non-primary index on content_piece."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'content_piece'"
                " AND indexname NOT LIKE '%pkey'"
            )
        ).all()
    return {name: definition for name, definition in rows}


def _drop(engine: Engine, names: list[str]) -> None:
    with engine.begin() as conn:
        for name in names:
            conn.execute(text(f'DROP INDEX IF EXISTS "{name}"'))
        conn.execute(text("ANALYZE content_piece"))


def _create(engine: Engine, definitions: list[str]) -> None:
    with engine.begin() as conn:
        conn.execute(text("SET maintenance_work_mem = '256MB'"))
        for definition in definitions:
            conn.execute(text(definition))
        conn.execute(text("ANALYZE content_piece"))


def _median_ms(fn: Callable[[], object], repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def _cursor_before_page(sessions: sessionmaker[Session], avatar: str, page: int) -> PageCursor:
    """The last row of page `page - 1`, found once by OFFSET (not timed)."""
    with sessions() as session:
        row = session.execute(
            select(ContentPiece.created_at, ContentPiece.id)
            .where(ContentPiece.avatar_id == avatar)
            .order_by(ContentPiece.created_at.desc(), ContentPiece.id.desc())
            .offset((page - 1) * PAGE - 1)
            .limit(1)
        ).one_or_none()
    if row is None:
        raise SystemExit(f"the avatar has fewer than {page} pages; load more pieces")
    return PageCursor(row.created_at, row.id)


def measure(engine: Engine, avatar: str, repeat: int, seed: int) -> dict[str, float]:
    sessions = sessionmaker(engine, expire_on_commit=False)
    cursor = _cursor_before_page(sessions, avatar, TARGET_PAGE)
    with sessions() as session:
        ids = list(session.scalars(select(ContentPiece.id).where(ContentPiece.avatar_id == avatar)))
    rng = random.Random(seed)
    statuses = iter(["published", "pending_review"] * (repeat + 10))

    def with_session(fn: Callable[[Session], object]) -> Callable[[], object]:
        def run() -> object:
            with sessions() as session:
                return fn(session)

        return run

    def bulk_update(session: Session) -> None:
        bulk_set_status(session, rng.sample(ids, 500), next(statuses))
        session.commit()

    def offset_page(session: Session) -> list[ContentPiece]:
        stmt = (
            select(ContentPiece)
            .where(ContentPiece.avatar_id == avatar)
            .order_by(ContentPiece.created_at.desc())
            .limit(PAGE)
            .offset((TARGET_PAGE - 1) * PAGE)
        )
        return list(session.scalars(stmt))

    return {
        "stats (1 aggregate query)": _median_ms(
            with_session(lambda s: avatar_summary(s, avatar)), repeat
        ),
        "stats (CLI avatar_stats, + batch totals)": _median_ms(
            with_session(lambda s: avatar_stats(s, avatar)), repeat
        ),
        "page 1 (keyset)": _median_ms(
            with_session(lambda s: list_pieces(s, avatar, page_size=PAGE)), repeat
        ),
        f"page {TARGET_PAGE} (keyset)": _median_ms(
            with_session(lambda s: list_pieces(s, avatar, after=cursor, page_size=PAGE)), repeat
        ),
        f"page {TARGET_PAGE} (OFFSET, spec example)": _median_ms(with_session(offset_page), repeat),
        "bulk status update, 500 pieces": _median_ms(with_session(bulk_update), repeat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pieces", type=int, default=1_000_000)
    parser.add_argument("--avatars", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--database-url", default=None, help="an empty PostgreSQL database")
    args = parser.parse_args()

    stop: Callable[[], None] | None = None
    base: Path | None = None
    if args.database_url:
        url = normalize_url(args.database_url)
    else:
        from tests.infra.postgres import create_database, start_embedded_postgres

        base = Path(tempfile.mkdtemp(prefix="bench-db-"))
        server_url, stop = start_embedded_postgres(base / "pgdata", durable=True)
        url = create_database(server_url, "bench_db")
    engine = create_engine(url, pool_size=5, max_overflow=10, pool_pre_ping=True)
    try:
        upgrade_to_head(engine)
        indexes = _secondary_indexes(engine)
        _drop(engine, list(indexes))  # load first, index after: how bulk loads are done
        started = time.perf_counter()
        summary = seed_history(engine, args.pieces, args.avatars)
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        _create(engine, list(indexes.values()))
        indexed = time.perf_counter() - started
        avatar = summary.flagship
        with sessionmaker(engine)() as session:
            own = avatar_summary(session, avatar)["total_pieces"]
        print(
            f"loaded {summary.pieces:,} pieces / {summary.batches:,} batches / "
            f"{len(summary.avatars)} avatars with COPY in {loaded:.1f}s; "
            f"{len(indexes)} indexes built in {indexed:.1f}s"
        )
        print(f"measured avatar: {avatar} ({own:,} pieces, {own // PAGE:,} pages of {PAGE})")

        with_indexes = measure(engine, avatar, args.repeat, seed=1)
        _drop(engine, list(indexes))
        without = measure(engine, avatar, args.repeat, seed=2)

        print(f"\nmedian ms over {args.repeat} runs (PostgreSQL, {summary.pieces:,} pieces)")
        print(f"{'query':<42}{'indexes':>10}{'dropped':>12}{'ratio':>9}")
        for name, value in with_indexes.items():
            dropped = without[name]
            print(f"{name:<42}{value:>10.2f}{dropped:>12.2f}{dropped / value:>8.1f}x")
        stats_ok = with_indexes["stats (1 aggregate query)"] < 50
        page_ok = max(with_indexes["page 1 (keyset)"], with_indexes["page 500 (keyset)"]) < 10
        print(
            f"\ntargets: stats < 50 ms: {'met' if stats_ok else 'MISSED'}; "
            f"keyset pages < 10 ms: {'met' if page_ok else 'MISSED'}"
        )
    finally:
        engine.dispose()
        if stop is not None:
            stop()
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
