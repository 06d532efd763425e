"""What is held for review: pieces in `pending_review`, with what a reviewer judges from.

Why links are minted here: a held piece's only image is its staged copy (the private
`staging/` prefix, or this host's staging folder; studio/staging_cleanup.py keeps it
until STAGING_RETENTION_DAYS). A link to it is a bearer credential, so it is minted on
demand, lives PRESIGNED_URL_TTL_SECONDS, and is never written to a row.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.db.models import Avatar, ContentPiece
from studio.review.models import HeldPiece

HELD = "pending_review"


def _tier(value: str | None) -> str:
    return value if value in ("capa1", "capa2", "capa3") else "capa3"


def _scores(verdict: dict[str, Any]) -> dict[str, float]:
    raw = verdict.get("scores") or {}
    if not isinstance(raw, dict):
        return {}
    return {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float)}


def _why_held(row: ContentPiece, verdict: dict[str, Any]) -> str | None:
    """The hold's reason: the verdict's when moderation held it; a degraded image or a
    stand-in holds a piece after a passing verdict, which then says nothing of it."""
    if verdict.get("status") == "pending_review" and verdict.get("reason"):
        return str(verdict["reason"])
    if row.degraded:
        from studio.outcomes import DEGRADED_REASON

        return DEGRADED_REASON
    if row.stand_ins:
        return "stand-in: " + ", ".join(row.stand_ins)
    return verdict.get("reason")


class _ImageLinks:
    """Mints short-lived links to staged images (one client, one expiry per listing)."""

    def __init__(self, ttl_seconds: int | None = None) -> None:
        from studio.staging import remote_staging
        from studio.storage.settings import StorageSettings

        self.ttl = ttl_seconds or StorageSettings().presigned_url_ttl_seconds
        self.expires_at = datetime.now(UTC) + timedelta(seconds=self.ttl)
        try:
            self.remote = remote_staging()
        except Exception:  # a misconfigured store: local paths only
            self.remote = None

    def link(self, staged_key: str | None) -> str | None:
        if self.remote is None or not staged_key:
            return None
        try:
            return self.remote.presigned_get(staged_key, self.ttl)
        except Exception:
            return None


def held_pieces(
    session: Session,
    *,
    avatar: str | None = None,
    batch_id: str | None = None,
    links: bool = True,
) -> list[HeldPiece]:
    """Pieces held as `pending_review`, oldest first; `avatar` is an id or a name.

    `links=False` skips minting image links (a count, a script that needs ids only).
    """
    stmt = (
        select(ContentPiece, Avatar.name)
        .join(Avatar, Avatar.id == ContentPiece.avatar_id)
        .where(ContentPiece.status == HELD)
    )
    if avatar is not None:
        stmt = stmt.where((Avatar.id == avatar) | (Avatar.name == avatar))
    if batch_id is not None:
        stmt = stmt.where(ContentPiece.batch_id == batch_id)
    stmt = stmt.order_by(ContentPiece.created_at, ContentPiece.id)
    minter = _ImageLinks() if links else None
    held = []
    for row, avatar_name in session.execute(stmt).all():
        verdict = row.verdict_info or {}
        image = row.image_info or {}
        path = image.get("path")
        url = minter.link(image.get("staged_key")) if minter else None
        held.append(
            HeldPiece(
                piece_id=row.id,
                batch_id=row.batch_id,
                avatar_id=row.avatar_id,
                avatar_name=avatar_name,
                tier=_tier(verdict.get("tier") or row.access_tier),  # type: ignore[arg-type]
                prompt=row.prompt,
                hook_text=row.hook_text,
                reason=_why_held(row, verdict),
                categories=list(verdict.get("categories") or []),
                checked_by=verdict.get("checked_by"),
                scores=_scores(verdict),
                provider=row.provider,
                degraded=bool(row.degraded),
                stand_ins=list(row.stand_ins or []),
                created_at=row.created_at,
                image_url=url,
                image_url_expires_at=minter.expires_at if (minter and url) else None,
                image_path=path if path and Path(path).exists() else None,
                content_type=image.get("content_type") or "image/png",
            )
        )
    return held
