"""Apply reviewers' decisions to held pieces: approve (store, publish) or reject.

Why one transaction per piece, its row locked: a decision is applied once. The row is
read FOR UPDATE (PostgreSQL; SQLite serialises writers), and a piece that already
carries a decision is reported `already-decided` without touching storage or events,
so approving twice (a resumed flow, a CLI retry, two reviewers) uploads and publishes
once. The image is stored before the row says `published`; if the process dies in
between, the piece is still held and the next approval re-puts the same key (keys are
derived from ids: studio/storage/base.py), so nothing is published twice.

An approved piece is stored as the upload step stores a passed one (tasks/upload.py):
capa1 in the public content bucket, capa2/capa3 in the private one (a capa3 piece is
never public), the local store when no object store is configured or the batch asked
for none. The outcomes carry what the events need (flows/review_events.py emits
`studio.piece.published` / `studio.piece.rejected` after the commit).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from studio.db.models import Batch, ContentPiece
from studio.review.models import Decision, DecisionOutcome
from studio.review.rules import capa1_refusal, hard_blocked
from studio.settings import Settings, get_settings
from studio.types import StoredObject

log = logging.getLogger("studio.review")

HELD = "pending_review"


def unknown_pieces(session: Session, piece_ids: Iterable[str]) -> list[str]:
    """The ids among `piece_ids` that name no piece (in the order given)."""
    ids = list(dict.fromkeys(piece_ids))
    known: set[str] = set()
    for start in range(0, len(ids), 500):
        page = ids[start : start + 500]
        known.update(session.scalars(select(ContentPiece.id).where(ContentPiece.id.in_(page))))
    return [i for i in ids if i not in known]


def _locked(session: Session, piece_id: str) -> ContentPiece | None:
    """The piece's row, held by this transaction until it commits: FOR UPDATE on
    PostgreSQL; on SQLite a no-op write first takes the database's write lock (SQLite
    has no row locks), so a second decision waits and then sees the first."""
    table = ContentPiece.__table__
    stmt = select(ContentPiece).where(ContentPiece.id == piece_id)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    else:
        session.execute(
            update(table).where(table.c.id == piece_id).values(status=table.c.status)
        )
    return session.scalars(stmt).first()


def _refused(decision: Decision, detail: str, row: ContentPiece | None = None) -> DecisionOutcome:
    log.warning(
        "Review refused | Piece: %s | Action: %s | Reason: %s",
        decision.piece_id, decision.action, detail,
    )
    return DecisionOutcome(
        piece_id=decision.piece_id,
        action=decision.action,
        result="refused",
        status=row.status if row is not None else None,
        tier=row.access_tier if row is not None else None,  # type: ignore[arg-type]
        detail=detail,
    )


def _already(decision: Decision, row: ContentPiece) -> DecisionOutcome:
    when = row.reviewed_at.isoformat() if row.reviewed_at else "earlier"
    return DecisionOutcome(
        piece_id=row.id,
        action=decision.action,
        result="already-decided",
        status=row.status,
        tier=row.access_tier,  # type: ignore[arg-type]
        detail=f"{row.review_decision} by {row.reviewed_by} at {when}; that decision stands",
        storage_key=row.storage_key,
        url=row.url or None,
    )


def _staged_image(row: ContentPiece) -> tuple[bytes, str, str] | None:
    """The held piece's staged image (its only copy): this host's file, else the private
    staging object. (bytes, content type, extension), or None when it is gone."""
    image = row.image_info or {}
    content_type = str(image.get("content_type") or "image/png")
    path = Path(str(image.get("path") or ""))
    extension = path.suffix.lstrip(".") or "png"
    if image.get("path") and path.is_file():
        return path.read_bytes(), content_type, extension
    staged_key = image.get("staged_key")
    if staged_key:
        from studio.staging import remote_staging

        remote = remote_staging()
        data = remote.get(str(staged_key)) if remote is not None else None
        if data is not None:
            extension = str(staged_key).rsplit(".", 1)[-1] if "." in str(staged_key) else "png"
            return data, content_type, extension
    return None


def _store(row: ContentPiece, tier: str, settings: Settings, upload: bool) -> StoredObject | str:
    """Store the held image where `tier` belongs; a StoredObject, or why it could not be."""
    from studio.storage.base import key_secret, object_key
    from studio.storage.errors import StorageError
    from studio.storage.registry import build_content_store, storage_settings

    staged = _staged_image(row)
    if staged is None:
        return (
            "its staged image is gone (kept STAGING_RETENTION_DAYS after the batch); "
            "nothing to publish"
        )
    data, content_type, extension = staged
    secret = key_secret(storage_settings(settings))
    key = object_key(row.avatar_id, row.batch_id, row.id, extension, secret=secret)
    store = build_content_store(settings, upload=upload)
    try:
        return store.put(row.id, key, data, content_type, tier)  # type: ignore[arg-type]
    except StorageError as exc:
        return f"storage refused it: {exc}"


def _batch_counts(session: Session, batch_id: str, moved_to: str) -> None:
    """The batch's counters follow the piece: one less held, one more published/rejected."""
    batch = session.get(Batch, batch_id)
    if batch is None:
        return
    batch.pending_review = max(0, (batch.pending_review or 0) - 1)
    if moved_to == "published":
        batch.published = (batch.published or 0) + 1
    elif moved_to == "rejected":
        batch.rejected = (batch.rejected or 0) + 1


def _record(row: ContentPiece, decision: Decision, now: datetime) -> None:
    row.review_decision = decision.action
    row.reviewed_by = decision.reviewer.strip()[:100]
    row.reviewed_at = now
    row.review_reason = (decision.reason or "").strip() or None


def _approve(
    session: Session, row: ContentPiece, decision: Decision, settings: Settings
) -> DecisionOutcome:
    verdict: dict[str, Any] = dict(row.verdict_info or {})
    texts = [row.prompt or "", row.hook_text or ""]
    current = row.access_tier if row.access_tier in ("capa1", "capa2", "capa3") else "capa3"
    blocked = hard_blocked(verdict, texts, current)
    if blocked:
        return _refused(
            decision,
            f"hard-blocked by moderation ({', '.join(blocked)}): never approved, reject it",
            row,
        )
    tier = decision.tier or current
    if tier == "capa1":
        why = capa1_refusal(verdict, texts, current)
        if why:
            return _refused(decision, why, row)
    batch = session.get(Batch, row.batch_id)
    upload = bool((batch.config or {}).get("upload_to_storage", True)) if batch else True
    stored = _store(row, tier, settings, upload)
    if isinstance(stored, str):
        return _refused(decision, stored, row)
    status = "stored_locally" if stored.needs_sync else "published"
    row.status = status
    row.access_tier = tier
    row.storage_key = stored.key
    row.url = stored.url
    row.storage_backend = stored.backend
    row.checksum = stored.checksum
    row.size_bytes = stored.size
    row.content_type = stored.content_type
    row.needs_sync = stored.needs_sync
    row.safety_rating = "approved"
    if stored.backend == "local" and "storage:local" not in (row.stand_ins or []):
        row.stand_ins = [*(row.stand_ins or []), "storage:local"]
    _record(row, decision, datetime.now(UTC))
    _batch_counts(session, row.batch_id, "published")
    return DecisionOutcome(
        piece_id=row.id,
        action="approve",
        result="applied",
        status=status,
        tier=tier,  # type: ignore[arg-type]
        detail=(
            f"re-tiered {current} -> {tier}" if tier != current else None
        ),
        storage_key=stored.key,
        url=stored.url or None,
    )


def _reject(session: Session, row: ContentPiece, decision: Decision) -> DecisionOutcome:
    row.status = "rejected"
    row.safety_rating = "rejected"
    _record(row, decision, datetime.now(UTC))
    _batch_counts(session, row.batch_id, "rejected")
    return DecisionOutcome(
        piece_id=row.id,
        action="reject",
        result="applied",
        status="rejected",
        tier=row.access_tier,  # type: ignore[arg-type]
        detail=row.review_reason,
    )


def _apply_one(decision: Decision, settings: Settings) -> DecisionOutcome:
    from studio.db.engine import session_scope

    with session_scope(settings) as session:
        row = _locked(session, decision.piece_id)
        if row is None:
            return _refused(decision, "no such piece")
        if row.review_decision is not None:
            return _already(decision, row)
        if row.status != HELD:
            return _refused(decision, f"not held for review (status {row.status})", row)
        if decision.action == "approve":
            outcome = _approve(session, row, decision, settings)
        else:
            outcome = _reject(session, row, decision)
        outcome.avatar_id, outcome.batch_id = row.avatar_id, row.batch_id
        outcome.reviewer = row.reviewed_by if outcome.result != "refused" else None
    return outcome


def apply_decisions(
    decisions: list[Decision], settings: Settings | None = None
) -> list[DecisionOutcome]:
    """One outcome per decision, in order: applied, already-decided or refused (why).

    Each piece is its own transaction: a refusal or a storage failure on one piece
    leaves the others' decisions applied. The domain emits no events (it imports no
    orchestrator): callers announce the applied ones with
    `flows.review_events.emit_decision_events(outcomes)`."""
    settings = settings or get_settings()
    outcomes = []
    for decision in decisions:
        outcome = _apply_one(decision, settings)
        if outcome.result == "applied":
            log.info(
                "Review applied | Piece: %s | Decision: %s | Tier: %s | Reviewer: %s",
                outcome.piece_id, decision.action, outcome.tier, decision.reviewer,
            )
        outcomes.append(outcome)
    return outcomes
