"""The review queue's typed values: a held piece, a decision and what came of it.

Why pydantic: the `review` flow's form (`wait_for_input`) and `studio review --json`
are built from these models, so the UI, the command line and the code agree on names.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, model_validator

Tier = Literal["capa1", "capa2", "capa3"]


class HeldPiece(BaseModel):
    """A piece held as `pending_review`, with what a reviewer needs to judge it."""

    piece_id: str
    batch_id: str
    avatar_id: str
    avatar_name: str
    tier: Tier
    prompt: str
    hook_text: str | None = None
    #: why it was held (moderation unavailable, degraded image, stand-in, ...)
    reason: str | None = None
    #: the categories moderation flagged, if it checked the piece
    categories: list[str] = Field(default_factory=list)
    #: who checked it (a moderator's name, "local", "none")
    checked_by: str | None = None
    #: the moderation scores per category, when they were recorded
    scores: dict[str, float] = Field(default_factory=dict)
    provider: str | None = None
    degraded: bool = False
    stand_ins: list[str] = Field(default_factory=list)
    created_at: datetime
    #: a short-lived presigned link to the staged image (private bucket), minted now
    image_url: str | None = None
    #: when `image_url` stops working (None for a local file)
    image_url_expires_at: datetime | None = None
    #: the staged image on this host's disk (the local store), if present
    image_path: str | None = None
    content_type: str = "image/png"


class Decision(BaseModel):
    """A reviewer's decision on one held piece."""

    piece_id: str
    action: Literal["approve", "reject"]
    #: re-tier on approval (capa1 public, capa2/capa3 private); None keeps the piece's tier
    tier: Tier | None = None
    reason: str | None = None
    reviewer: str

    @model_validator(mode="after")
    def _required(self) -> Decision:
        if not self.reviewer.strip():
            raise ValueError("reviewer: a decision names its reviewer")
        if self.action == "reject" and not (self.reason or "").strip():
            raise ValueError("reason: a rejection gives its reason")
        return self


class DecisionOutcome(BaseModel):
    """What one decision came to."""

    piece_id: str
    action: Literal["approve", "reject"]
    #: applied now; already-decided (an earlier decision stands: nothing done twice);
    #: refused (why in `detail`)
    result: Literal["applied", "already-decided", "refused"]
    #: the piece's status afterwards (published, rejected, pending_review, ...)
    status: str | None = None
    tier: Tier | None = None
    detail: str | None = None
    #: the object key of an approved piece, and its lasting link (capa1's public URL)
    storage_key: str | None = None
    url: str | None = None
    #: for the events announcing an applied decision (flows/review_events.py)
    avatar_id: str | None = None
    batch_id: str | None = None
    reviewer: str | None = None
