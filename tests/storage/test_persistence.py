"""Durable progress, keyset pages, bulk updates, aggregates, pool: SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, func, select

from studio.avatars import add_avatar
from studio.db import piece_progress
from studio.db.engine import dispose_engines, get_engine, session_scope
from studio.db.models import Batch, ContentPiece
from studio.db.pool import PoolExhausted
from studio.db.queries import PageCursor, avatar_summary, bulk_set_status, list_pieces
from studio.db.seed import seed_history
from studio.settings import reload_settings
from studio.types import GeneratedImage, Hook, PieceSpec, SafetyVerdict, StoredObject


def _avatar_and_batch(batch_id: str = "batch-1") -> str:
    with session_scope() as session:
        avatar = add_avatar(session, f"nova-{batch_id}", "fitness", "https://w.example/l.st")
        session.add(
            Batch(
                id=batch_id,
                avatar_id=avatar.id,
                config={},
                requested=3,
                step_seconds={},
                cost_breakdown={},
                stand_ins=[],
            )
        )
        return avatar.id


def _specs(batch_id: str, n: int) -> list[PieceSpec]:
    tiers = ["capa1", "capa2", "capa3"]
    return [
        PieceSpec(
            piece_id=f"{batch_id}-p{i}",
            batch_id=batch_id,
            index=i,
            prompt=f"neutral placeholder prompt {i}",
            tier=tiers[i % 3],  # type: ignore[arg-type]
            template_id=f"fitness-{i:03d}",
        )
        for i in range(n)
    ]


class StatementCounter:
    """Counts the SQL statements (and executemany calls) this thread sends on the engine.

    Only this thread's: a background thread an earlier test left behind in the same
    process (a lease keeper, a progress writer) may use the engine meanwhile."""

    def __init__(self, engine) -> None:
        self.statements: list[tuple[str, bool]] = []
        self.engine = engine
        self.thread = threading.get_ident()
        event.listen(engine, "before_cursor_execute", self._on)

    def _on(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if threading.get_ident() == self.thread:
            self.statements.append((statement.split()[0].upper(), executemany))

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._on)

    def of(self, verb: str) -> list[tuple[str, bool]]:
        return [s for s in self.statements if s[0] == verb]


def test_plan_is_recorded_once_and_read_back(any_database) -> None:
    avatar_id = _avatar_and_batch()
    specs = _specs("batch-1", 5)
    for _ in range(2):  # a re-run records the same plan: no duplicates
        with session_scope() as session:
            piece_progress.record_plan(session, avatar_id, "batch-1", specs)
    with session_scope() as session:
        count = session.scalar(select(func.count()).select_from(ContentPiece))
        loaded = piece_progress.load_progress(session, "batch-1")
    assert count == 5
    assert loaded is not None
    assert loaded.specs == specs
    assert loaded.counts() == {"planned": 5}


def test_each_step_is_one_statement_and_progress_only_moves_forward(any_database, tmp_path):
    avatar_id = _avatar_and_batch()
    specs = _specs("batch-1", 4)
    staged = tmp_path / "img.png"
    staged.write_bytes(b"png")
    images = [
        GeneratedImage(piece_id=s.piece_id, provider="preview", path=str(staged), cost_usd=0.01)
        for s in specs
    ]
    hooks = [Hook(piece_id=s.piece_id, text=f"hook {s.index}", source="template") for s in specs]
    verdicts = [
        SafetyVerdict(piece_id=s.piece_id, status="passed", tier="capa2") for s in specs[:3]
    ] + [SafetyVerdict(piece_id=specs[3].piece_id, status="rejected", tier="capa1", reason="x")]
    stored = [
        StoredObject(
            piece_id=s.piece_id,
            key=f"k/{s.piece_id}.png",
            url=f"https://cdn.example/{s.piece_id}",
            backend="r2",
            size=3,
            checksum="ab" * 32,
            needs_sync=s.index == 0,
        )
        for s in specs[:3]
    ]
    with session_scope() as session:
        piece_progress.record_plan(session, avatar_id, "batch-1", specs)
    counter = StatementCounter(get_engine())
    try:
        for step, items in (
            (piece_progress.record_images, images),
            (piece_progress.record_hooks, hooks),
            (piece_progress.record_verdicts, verdicts),
            (piece_progress.record_stored, stored),
        ):
            with session_scope() as session:
                step(session, items)
        updates = counter.of("UPDATE")
    finally:
        counter.close()
    assert len(updates) == 4  # one (executemany) statement per step
    assert all(executemany for _, executemany in updates)

    with session_scope() as session:
        # a late duplicate of an earlier step must not move pieces backwards
        piece_progress.record_images(session, images)
    with session_scope() as session:
        loaded = piece_progress.load_progress(session, "batch-1")
        rows = {r.id: r for r in session.scalars(select(ContentPiece))}
    assert loaded is not None
    assert loaded.counts() == {"stored": 3, "checked": 1}
    assert set(loaded.images) == {s.piece_id for s in specs}
    assert loaded.hooks[specs[1].piece_id].text == "hook 1"
    assert loaded.verdicts[specs[3].piece_id].status == "rejected"
    assert loaded.stored[specs[0].piece_id].needs_sync is True
    assert loaded.stored[specs[1].piece_id].url == f"https://cdn.example/{specs[1].piece_id}"
    assert rows[specs[1].piece_id].access_tier == "capa2"  # re-tiered by the verdict
    assert rows[specs[0].piece_id].checksum == "ab" * 32
    assert all(loaded.image_done(s.piece_id) for s in specs)
    staged.unlink()
    # stored and held-back pieces need no file any more; nothing else is affected here
    assert all(loaded.image_done(s.piece_id) for s in specs)


def test_image_without_staged_file_is_not_done(any_database, tmp_path) -> None:
    avatar_id = _avatar_and_batch()
    specs = _specs("batch-1", 1)
    image = GeneratedImage(piece_id=specs[0].piece_id, provider="p", path=str(tmp_path / "gone"))
    with session_scope() as session:
        piece_progress.record_plan(session, avatar_id, "batch-1", specs)
        piece_progress.record_images(session, [image])
    with session_scope() as session:
        loaded = piece_progress.load_progress(session, "batch-1")
    assert loaded is not None and not loaded.image_done(specs[0].piece_id)


def test_unknown_batch_has_no_progress(any_database) -> None:
    with session_scope() as session:
        assert piece_progress.load_progress(session, "nope") is None


def _bulk_rows(avatar_id: str, batch_id: str, n: int, same_time: bool) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    specs = _specs(batch_id, n)
    with session_scope() as session:
        piece_progress.record_plan(session, avatar_id, batch_id, specs)
        for i, spec in enumerate(specs):
            row = session.get(ContentPiece, spec.piece_id)
            assert row is not None
            # ties on created_at (every 3rd pair) prove the id tie-breaker
            row.created_at = base if same_time else base + timedelta(seconds=(i // 2) * 60)


@pytest.mark.parametrize("same_time", [False, True])
def test_keyset_pages_cover_everything_once_in_order(any_database, same_time) -> None:
    avatar_id = _avatar_and_batch()
    _bulk_rows(avatar_id, "batch-1", 47, same_time)
    seen: list[str] = []
    cursor = None
    pages = 0
    with session_scope() as session:
        while True:
            page = list_pieces(session, avatar_id, after=cursor, page_size=20)
            pages += 1
            seen.extend(p.id for p in page.items)
            if page.next_cursor is None:
                break
            cursor = PageCursor.decode(page.next_cursor.encode())  # round-trips as a token
        expected = list(
            session.scalars(
                select(ContentPiece.id)
                .where(ContentPiece.avatar_id == avatar_id)
                .order_by(ContentPiece.created_at.desc(), ContentPiece.id.desc())
            )
        )
    assert pages == 3
    assert seen == expected
    assert len(set(seen)) == 47


def test_bulk_status_update_is_one_statement_and_one_commit(any_database) -> None:
    avatar_id = _avatar_and_batch()
    _bulk_rows(avatar_id, "batch-1", 30, False)
    ids = [f"batch-1-p{i}" for i in range(25)]
    engine = get_engine()
    counter = StatementCounter(engine)
    commits: list[int] = []
    me = threading.get_ident()
    event.listen(engine, "commit", lambda conn: me == threading.get_ident() and commits.append(1))
    try:
        with session_scope() as session:
            changed = bulk_set_status(session, ids, "published")
    finally:
        counter.close()
    assert changed == 25
    assert len(counter.of("UPDATE")) == 1
    assert len(commits) == 1
    with session_scope() as session:
        summary = avatar_summary(session, avatar_id)
    assert summary["by_status"] == {"published": 25, "planned": 5}
    assert summary["total_pieces"] == 30
    assert summary["by_tier"] == {"capa1": 10, "capa2": 10, "capa3": 10}


def test_avatar_summary_is_one_aggregate_query(any_database) -> None:
    avatar_id = _avatar_and_batch()
    _bulk_rows(avatar_id, "batch-1", 9, False)
    counter = StatementCounter(get_engine())
    try:
        with session_scope() as session:
            summary = avatar_summary(session, avatar_id)
    finally:
        counter.close()
    selects = counter.of("SELECT")
    assert len(selects) == 1
    assert summary["total_pieces"] == 9 and summary["needs_sync"] == 0


def test_seed_history_makes_realistic_rows(any_database) -> None:
    summary = seed_history(get_engine(), pieces=1234, avatars=7, seed=3)
    with session_scope() as session:
        total = session.scalar(select(func.count()).select_from(ContentPiece))
        flagship = avatar_summary(session, summary.flagship)
        batches = session.scalar(select(func.count()).select_from(Batch))
    assert total == 1234
    assert batches == summary.batches
    others = (1234 - flagship["total_pieces"]) / 6
    assert flagship["total_pieces"] > 3 * others  # one avatar is far more active
    assert set(flagship["by_tier"]) == {"capa1", "capa2", "capa3"}
    assert flagship["by_status"]["published"] > flagship["total_pieces"] // 2


@pytest.fixture
def tiny_pool(any_database, monkeypatch):
    """A pool of one connection and a short wait, so exhaustion is easy to reach."""
    if any_database.resolved_database_url.startswith("sqlite"):
        pytest.skip("the embedded SQLite engine has no pool limits to exhaust")
    monkeypatch.setenv("DB_POOL_SIZE", "1")
    monkeypatch.setenv("DB_MAX_OVERFLOW", "0")
    monkeypatch.setenv("DB_POOL_TIMEOUT", "0.2")
    dispose_engines()
    yield reload_settings()
    dispose_engines()


def test_pool_exhaustion_gives_a_clear_error(tiny_pool) -> None:
    held = get_engine().connect()
    try:
        with pytest.raises(PoolExhausted) as caught, session_scope():
            pass
    finally:
        held.close()
    message = str(caught.value)
    assert "DB_POOL_SIZE" in message and "DB_MAX_OVERFLOW" in message
    with session_scope() as session:  # the pool recovers once the connection is back
        assert session.scalar(select(func.count()).select_from(Batch)) == 0


def test_pool_exhaustion_is_retried_until_a_connection_frees(tiny_pool) -> None:
    held = get_engine().connect()
    released = threading.Event()

    class ReleaseOnRetry(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "pool exhausted" in record.getMessage() and not released.is_set():
                released.set()
                held.close()

    handler = ReleaseOnRetry()
    pool_logger = logging.getLogger("studio.db.pool")
    pool_logger.addHandler(handler)
    try:
        with session_scope() as session:
            assert session.scalar(select(func.count()).select_from(Batch)) == 0
    finally:
        pool_logger.removeHandler(handler)
        if not released.is_set():
            held.close()
    assert released.is_set()
