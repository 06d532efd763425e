"""Durable per-piece progress: planned, generated, captioned, checked, stored, saved.

Why: a batch process can die at any point (kill -9, OOM, a lost worker). Each step's
result is written to the piece's row as soon as the step finishes, in one statement and
one commit per step, so re-running the batch reads back what was done and repeats (and
pays for) nothing. Rows only move forward: a step never downgrades a piece that a later
step already advanced. The final statuses (published, rejected, failed, pending_review)
are written by the save step and mean "saved".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Table, bindparam, insert, literal_column, select, update
from sqlalchemy.orm import Session

from studio.db.models import Batch, ContentPiece
from studio.types import GeneratedImage, Hook, PieceSpec, SafetyVerdict, StoredObject

#: progress statuses in order; a step may only move a piece forward along this list
PROGRESS = ("planned", "generated", "captioned", "checked", "stored")
#: statuses the save step writes; a piece in one of them is "saved"
SAVED = ("published", "stored_locally", "rejected", "failed", "pending_review")

_TABLE: Table = ContentPiece.__table__  # type: ignore[assignment]


def _before(status: str) -> tuple[str, ...]:
    """Statuses a piece may be in for a step that sets `status` to apply (forward only)."""
    return (*PROGRESS[: PROGRESS.index(status)], "failed")


def _forward_only(status: str) -> ColumnElement[bool]:
    """`status IN (...earlier...)` with inline constants: executemany forbids expanding IN."""
    return _TABLE.c.status.in_([literal_column(f"'{s}'") for s in _before(status)])


def _insert_ignoring_existing(session: Session, rows: list[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT (id) DO NOTHING in the session's dialect (one statement)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:  # pragma: no cover - other dialects: plain insert
        session.execute(insert(_TABLE), rows)
        return
    session.execute(dialect_insert(_TABLE).on_conflict_do_nothing(index_elements=["id"]), rows)


def record_plan(session: Session, avatar_id: str, batch_id: str, specs: list[PieceSpec]) -> int:
    """Write every planned piece (status `planned`, its full spec) in one bulk insert."""
    if not specs:
        return 0
    now = datetime.now(UTC)
    rows = [
        {
            "id": spec.piece_id,
            "avatar_id": avatar_id,
            "batch_id": batch_id,
            "template_id": spec.template_id,
            "prompt": spec.prompt,
            "access_tier": spec.tier,
            "safety_rating": "unchecked",
            "status": "planned",
            "cost_usd": 0.0,
            "stand_ins": [],
            "created_at": now,
            "spec": spec.model_dump(mode="json"),
            "needs_sync": False,
            # the size asked of the provider (None: the old square 1024x1024)
            "width": spec.width,
            "height": spec.height,
        }
        for spec in specs
    ]
    _insert_ignoring_existing(session, rows)
    return len(rows)


def _advance(session: Session, status: str, rows: list[dict[str, Any]]) -> int:
    """One executemany UPDATE keyed by piece id, applied only where it moves forward."""
    if not rows:
        return 0
    columns = [c for c in rows[0] if c != "piece_id"]
    # bind names must differ from column names in an UPDATE's SET clause
    stmt = (
        update(_TABLE)
        .where(_TABLE.c.id == bindparam("b_piece_id"), _forward_only(status))
        .values({**{c: bindparam(f"b_{c}") for c in columns}, "status": status})
    )
    session.connection().execute(stmt, [{f"b_{k}": v for k, v in row.items()} for row in rows])
    return len(rows)


def record_images(session: Session, images: Iterable[GeneratedImage]) -> int:
    """Step 2 done for these pieces: provider, cost and the staged image's facts."""
    rows = [
        {
            "piece_id": image.piece_id,
            "provider": image.provider,
            "cost_usd": image.cost_usd,
            "image_info": image.model_dump(mode="json"),
        }
        for image in images
    ]
    return _advance(session, "generated", rows)


def record_hooks(session: Session, hooks: Iterable[Hook]) -> int:
    """Step 3 done: the hook text (and where it came from, to rebuild it on resume)."""
    rows = [
        {"piece_id": h.piece_id, "hook_text": h.text, "hook_info": h.model_dump(mode="json")}
        for h in hooks
    ]
    return _advance(session, "captioned", rows)


def record_verdicts(session: Session, verdicts: Iterable[SafetyVerdict]) -> int:
    """Step 4 done: the verdict, including a re-tiering (the tier the piece will ship in)."""
    rows = [
        {
            "piece_id": v.piece_id,
            "access_tier": v.tier,
            "verdict_info": v.model_dump(mode="json"),
        }
        for v in verdicts
    ]
    return _advance(session, "checked", rows)


def record_stored(session: Session, stored: Iterable[StoredObject]) -> int:
    """Step 5 done: key, URL, backend, checksum, size, type and the needs-sync mark."""
    rows = [
        {
            "piece_id": obj.piece_id,
            "storage_key": obj.key,
            "url": obj.url,
            "storage_backend": obj.backend,
            "checksum": obj.checksum,
            "size_bytes": obj.size,
            "content_type": obj.content_type,
            "needs_sync": obj.needs_sync,
        }
        for obj in stored
    ]
    return _advance(session, "stored", rows)


@dataclass
class BatchProgress:
    """What a batch has already done, read back from its rows."""

    batch_id: str
    specs: list[PieceSpec] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)
    images: dict[str, GeneratedImage] = field(default_factory=dict)
    hooks: dict[str, Hook] = field(default_factory=dict)
    verdicts: dict[str, SafetyVerdict] = field(default_factory=dict)
    stored: dict[str, StoredObject] = field(default_factory=dict)

    def image_done(self, piece_id: str) -> bool:
        """An image is reusable when recorded and still needed only as a fact, or staged.

        Stored pieces and pieces the safety check held back need no file any more;
        the others need the staged file (the upload reads it).
        """
        image = self.images.get(piece_id)
        if image is None:
            return False
        verdict = self.verdicts.get(piece_id)
        held_back = verdict is not None and verdict.status in ("rejected", "pending_review")
        return piece_id in self.stored or held_back or Path(image.path).exists()

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for status in self.statuses.values():
            out[status] = out.get(status, 0) + 1
        return out


def load_progress(session: Session, batch_id: str) -> BatchProgress | None:
    """The batch's plan and finished steps, or None when nothing was planned yet."""
    rows = session.execute(select(ContentPiece).where(ContentPiece.batch_id == batch_id)).scalars()
    progress = BatchProgress(batch_id=batch_id)
    for row in rows:
        if row.spec is None:
            continue  # a row written by an older version: not resumable, keep as is
        spec = PieceSpec.model_validate(row.spec)
        progress.specs.append(spec)
        progress.statuses[spec.piece_id] = row.status
        if row.image_info:
            progress.images[spec.piece_id] = GeneratedImage.model_validate(row.image_info)
        if row.hook_info:
            progress.hooks[spec.piece_id] = Hook.model_validate(row.hook_info)
        if row.verdict_info:
            progress.verdicts[spec.piece_id] = SafetyVerdict.model_validate(row.verdict_info)
        if row.storage_key and row.storage_backend and row.checksum:
            progress.stored[spec.piece_id] = StoredObject(
                piece_id=spec.piece_id,
                key=row.storage_key,
                url=row.url or "",
                backend=row.storage_backend,
                size=row.size_bytes or 0,
                checksum=row.checksum,
                content_type=row.content_type or "image/png",
                needs_sync=row.needs_sync,
            )
    if not progress.specs:
        return None
    progress.specs.sort(key=lambda s: s.index)
    return progress


def batch_owners(session: Session, batch_id: str) -> set[str]:
    """The avatar ids that own `batch_id`: its batch row's and its pieces' (normally one,
    none for a new batch).

    Why: a run given an existing batch id continues that batch (a retried run does),
    upserting its pieces; given another avatar's id it would move that avatar's pieces
    (premium ones included) to itself and publish them under its own run. The validate
    step refuses such a run before it reads the batch's progress or spends anything.
    """
    owners = set(session.scalars(select(Batch.avatar_id).where(Batch.id == batch_id)))
    owners.update(
        session.scalars(
            select(ContentPiece.avatar_id).where(ContentPiece.batch_id == batch_id).distinct()
        )
    )
    return owners
