"""SQLAlchemy 2 typed models: avatars, templates, batches and content pieces.

The schema itself is owned by the Alembic migrations in `studio/db/migrations`; these
models must match them (a test compares the two).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON}


class Avatar(Base):
    __tablename__ = "avatar"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    niche: Mapped[str] = mapped_column(String(50))
    lora_weights_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    cadence: Mapped[str] = mapped_column(String(20), default="daily")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # the avatar's profile (migration 0007; checked by studio/avatar_profiles.py).
    # Empty/NULL means the studio-wide default, which is what avatars added before had.
    #: the LoRA's trained tokens, put in every prompt of this avatar
    trigger_words: Mapped[list[str]] = mapped_column(
        JSON, default=list, server_default=text("'[]'")
    )
    lora_strength: Mapped[float] = mapped_column(Float, default=1.0, server_default="1.0")
    #: {"capa1": .., "capa2": .., "capa3": ..} summing to 1
    tier_mix: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    platforms: Mapped[list[str]] = mapped_column(JSON, default=list, server_default=text("'[]'"))
    pieces_per_run: Mapped[int | None] = mapped_column(Integer, nullable=True)
    daily_budget_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: path of an API-format ComfyUI workflow (overrides COMFYUI_WORKFLOW)
    workflow: Mapped[str | None] = mapped_column(Text, nullable=True)
    checkpoint: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: aspect ratio "W:H" (overrides the platform's format)
    format: Mapped[str | None] = mapped_column(String(20), nullable=True)


class Template(Base):
    __tablename__ = "template"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    niche: Mapped[str] = mapped_column(String(50), index=True)
    category: Mapped[str] = mapped_column(String(50), index=True)
    tier: Mapped[str] = mapped_column(String(10))
    platforms: Mapped[list[str]] = mapped_column(JSON)
    prompt: Mapped[str] = mapped_column(Text)
    hook_pattern: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    #: migration 0008: {placeholder: [values]} that fill the prompt's `{placeholders}`
    variables: Mapped[dict[str, list[str]]] = mapped_column(
        JSON, default=dict, server_default=text("'{}'")
    )


class Batch(Base):
    __tablename__ = "batch"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    avatar_id: Mapped[str] = mapped_column(ForeignKey("avatar.id"), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="running")
    step_seconds: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    cost_breakdown: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    requested: Mapped[int] = mapped_column(Integer, default=0)
    published: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    pending_review: Mapped[int] = mapped_column(Integer, default=0)
    stand_ins: Mapped[list[str]] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: migration 0004: every run that resumed this batch ({run_id, by, at, resumes})
    resumes: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    #: migration 0004: pieces made from a cached asset, counted apart from fresh ones
    degraded: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ContentPiece(Base):
    __tablename__ = "content_piece"
    __table_args__ = (
        Index("idx_content_piece_avatar_id", "avatar_id"),
        Index("idx_content_piece_access_tier", "access_tier"),
        Index("idx_content_piece_safety_rating", "safety_rating"),
        Index("idx_content_piece_created_at", "created_at"),
        Index("idx_content_piece_avatar_created", "avatar_id", "created_at"),
        Index("idx_content_piece_batch_id", "batch_id"),
        # storage/resume (migration 0002): sync lookup and keyset listing
        Index("idx_content_piece_needs_sync", "needs_sync"),
        Index("idx_content_piece_avatar_created_id", "avatar_id", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    avatar_id: Mapped[str] = mapped_column(ForeignKey("avatar.id"))
    batch_id: Mapped[str] = mapped_column(ForeignKey("batch.id"))
    template_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    prompt: Mapped[str] = mapped_column(Text)
    access_tier: Mapped[str] = mapped_column(String(10))
    hook_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    safety_rating: Mapped[str] = mapped_column(String(20), default="unchecked")
    status: Mapped[str] = mapped_column(String(20))
    provider: Mapped[str | None] = mapped_column(String(30), nullable=True)
    storage_key: Mapped[str | None] = mapped_column(Text, nullable=True)
    url: Mapped[str | None] = mapped_column(Text, nullable=True)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    #: which stand-ins made this piece (e.g. "image:preview"); empty for real providers
    stand_ins: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # durable per-piece progress (migration 0002): what each finished step produced,
    # so a resumed batch repeats and pays for nothing (see studio/db/piece_progress.py)
    spec: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    image_info: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    hook_info: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    verdict_info: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    storage_backend: Mapped[str | None] = mapped_column(String(20), nullable=True)
    checksum: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size_bytes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    content_type: Mapped[str | None] = mapped_column(String(50), nullable=True)
    #: kept locally after a remote-store failure; the storage-sync flow clears it
    needs_sync: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: migration 0004: the image is a cached asset of an earlier batch, not a fresh one
    degraded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: migration 0007: the size the image was asked for (NULL: made before, 1024x1024)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: migration 0009: a reviewer's decision on a held piece (approve/reject), who, when, why
    review_decision: Mapped[str | None] = mapped_column(String(10), nullable=True)
    reviewed_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    review_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class CostLedgerEntry(Base):
    """One provider call that is or may be billed: an image attempt, a hook call (a group
    of pieces), a moderation call. Written before the call (reserved) and settled after
    (billed or released, with its outcome), so the money a batch spent is a sum of rows
    even when an output was lost or its piece failed later (see studio/ledger/).

    One row per call, not per piece: a hook call covering ten pieces is one charge, so
    `piece_ids` lists what it covered and `piece_id` is set only for single-piece calls;
    a sum over rows never counts a charge twice. No foreign keys: a billed call is kept
    even when its batch row was never written.
    """

    __tablename__ = "cost_ledger"
    __table_args__ = (
        Index("idx_cost_ledger_batch_kind", "batch_id", "kind"),
        Index("idx_cost_ledger_avatar_created", "avatar_id", "created_at"),
        Index("idx_cost_ledger_piece_provider", "piece_id", "provider"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    batch_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    avatar_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    piece_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    piece_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: image, hook or moderation
    kind: Mapped[str] = mapped_column(String(20))
    provider: Mapped[str] = mapped_column(String(30))
    job_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    #: what the row counts: the reserved price while in flight, the billed price after
    price_usd: Mapped[float] = mapped_column(Float, default=0.0)
    #: a planning figure beside the billed one (the spec's $0.001 per moderation call)
    estimate_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: reserved (in flight), billed, released (never reached billing: not counted)
    status: Mapped[str] = mapped_column(String(10))
    #: ok, failed, lost, timeout, cancelled, budget, recovered, abandoned; NULL in flight
    outcome: Mapped[str | None] = mapped_column(String(20), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    settled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ProviderLease(Base):
    """One provider slot a pipeline process asked for or holds (engine/lease_census.py).

    Written before the slot is asked of the Prefect server, beaten while the process
    lives, stamped `released_at` after the slot went back: the census a reconcile
    compares with the server's count of the limit's slots.
    """

    __tablename__ = "provider_lease"
    __table_args__ = (
        Index("idx_provider_lease_provider_released", "provider", "released_at"),
        Index("idx_provider_lease_holder", "holder"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    provider: Mapped[str] = mapped_column(String(30))
    #: host:pid of the process that holds it
    holder: Mapped[str] = mapped_column(String(120))
    #: the Prefect lease id once granted; NULL while asked for
    lease_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    beat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ProviderPace(Base):
    """One provider's fleet-wide pace (issue 20, studio/db/provider_pace.py): the limit
    AIMD last put on Prefect's `provider:<name>`, an operator's own cap, the change in
    progress, and the fleet-wide Retry-After every process honours before a call."""

    __tablename__ = "provider_pace"

    provider: Mapped[str] = mapped_column(String(30), primary_key=True)
    #: the configured `*_MAX_CONCURRENT` (None: a provider without a limit, Retry-After only)
    ceiling: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: the limit AIMD last put on Prefect (None: no limit seen yet)
    current: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: an operator's own cap: Prefect's limit found different from `current`/`pending_to`
    manual_cap: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: a change written before Prefect was told (crash-safe), and when
    pending_to: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pending_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: fleet-wide Retry-After: no process starts a call before it
    throttled_until: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    #: the limit at which the provider last throttled (the probe point)
    last_throttle_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_throttle_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    last_decrease_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    last_change_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_success_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    #: the highest limit that held a probe window without a throttling answer
    held_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: how much the last raise added (None: the last change was not a raise)
    raise_step: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ProviderLimitChange(Base):
    """One change of a provider's limit: throttled, recovered, applied (by `studio limits
    apply`) or manual (an operator's own cap, seen on Prefect)."""

    __tablename__ = "provider_limit_change"
    __table_args__ = (
        Index("idx_provider_limit_change_at", "at"),
        Index("idx_provider_limit_change_provider_at", "provider", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String(30))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    from_limit: Mapped[int] = mapped_column(Integer)
    to_limit: Mapped[int] = mapped_column(Integer)
    #: throttled | recovered | applied | manual
    reason: Mapped[str] = mapped_column(String(10))
    status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    retry_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: the host and pid of the process that made the change
    host: Mapped[str | None] = mapped_column(String(120), nullable=True)
    pid: Mapped[str | None] = mapped_column(String(20), nullable=True)
