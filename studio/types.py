"""The small typed values that flow between the pipeline's steps.

They are pydantic models so that Prefect can persist and display them, and so that a
piece keeps the same `piece_id` from template selection to the database row: every
retry and every re-run of a step is keyed by it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

Tier = Literal["capa1", "capa2", "capa3"]
TIERS: tuple[Tier, ...] = ("capa1", "capa2", "capa3")


class Platform(StrEnum):
    INSTAGRAM = "instagram"
    TIKTOK = "tiktok"
    TWITTER = "twitter"
    PATREON = "patreon"
    ONLYFANS = "onlyfans"


class PieceStatus(StrEnum):
    PLANNED = "planned"
    GENERATED = "generated"
    CAPTIONED = "captioned"
    CHECKED = "checked"
    STORED = "stored"
    SAVED = "saved"
    PUBLISHED = "published"
    #: passed and kept in the local store because the object store failed at upload;
    #: `studio storage-sync` uploads it and it becomes `published`
    STORED_LOCALLY = "stored_locally"
    REJECTED = "rejected"
    PENDING_REVIEW = "pending_review"
    FAILED = "failed"


class AvatarRef(BaseModel):
    """What the steps need to know of an avatar; detached from the ORM session.

    Beyond its identity it carries the avatar's profile: a LoRA trained on a person needs
    its trigger word in every prompt (or the face does not appear), and each avatar has
    its own tier mix, platforms, run size, budget and image settings. None/empty means
    "the studio-wide default" (settings or the request)."""

    id: str
    name: str
    niche: str
    lora_weights_url: str | None = None
    #: put in every prompt of this avatar, in this order (the LoRA's trained tokens)
    trigger_words: list[str] = Field(default_factory=list)
    #: the LoRA's weight in the image model (ComfyUI/Modal lora strength, Replicate lora_scale)
    lora_strength: float = 1.0
    #: this avatar's default tier shares, e.g. {"capa1": 0.6, "capa2": 0.3, "capa3": 0.1}
    tier_mix: dict[str, float] | None = None
    #: platforms it posts to; the scheduled fan-out makes each platform's share
    platforms: list[str] = Field(default_factory=list)
    #: pieces per scheduled run (split over `platforms`)
    pieces_per_run: int | None = None
    #: what all its batches may spend in a UTC day (overrides AVATAR_DAILY_BUDGET_USD)
    daily_budget_usd: float | None = None
    #: API-format ComfyUI workflow file (overrides COMFYUI_WORKFLOW)
    workflow: str | None = None
    #: checkpoint file name (overrides COMFYUI_CHECKPOINT)
    checkpoint: str | None = None
    #: aspect ratio such as "9:16" (overrides the platform's format)
    format: str | None = None


class PieceSpec(BaseModel):
    """One planned piece: decided in step 1, never changed afterwards except its tier."""

    piece_id: str
    batch_id: str
    index: int
    prompt: str
    tier: Tier
    template_id: str | None = None
    category: str | None = None
    niche: str | None = None
    hook_pattern: str | None = None
    custom: bool = False
    #: the platform the piece is made for, and its image format: the aspect ratio (e.g.
    #: "4:5") and the size native to SDXL for it (ComfyUI and Modal are sent width and
    #: height, Replicate's FLUX the aspect ratio); None: square 1024x1024 as before
    platform: str | None = None
    aspect_ratio: str | None = None
    width: int | None = None
    height: int | None = None


class GeneratedImage(BaseModel):
    """An image made for a piece, staged on local disk (never passed around as bytes)."""

    piece_id: str
    provider: str
    path: str
    content_type: str = "image/png"
    seconds: float = 0.0
    cost_usd: float = 0.0
    stand_in: bool = False
    attempts: int = 1
    #: the provider's id of the billed job that made it (None for stand-ins, cache)
    provider_job_id: str | None = None
    #: a cached asset of an earlier batch, reused when every provider failed: not new
    degraded: bool = False
    #: where the image is staged in the object store's private area, when one is used
    staged_key: str | None = None


class ImageFailure(BaseModel):
    piece_id: str
    reason: str


class Hook(BaseModel):
    piece_id: str
    text: str
    source: str
    stand_in: bool = False


class HookBatch(BaseModel):
    """The hooks of a batch plus what writing them cost."""

    hooks: dict[str, Hook] = Field(default_factory=dict)
    cost_usd: float = 0.0
    calls: int = 0
    failures: int = 0
    # measured token usage, e.g. {"input": .., "output": .., "cache_write": .., "cache_read": ..}
    tokens: dict[str, int] = Field(default_factory=dict)


class SafetyVerdict(BaseModel):
    piece_id: str
    status: Literal["passed", "rejected", "retiered", "pending_review", "skipped"]
    tier: Tier
    reason: str | None = None
    categories: list[str] = Field(default_factory=list)
    checked_by: str = "local"


class SafetyReport(BaseModel):
    verdicts: dict[str, SafetyVerdict] = Field(default_factory=dict)
    cost_usd: float = 0.0
    calls: int = 0


class StoredObject(BaseModel):
    piece_id: str
    key: str
    url: str
    backend: str
    size: int
    checksum: str
    content_type: str = "image/png"
    #: kept in the local store because the remote store failed; `storage-sync` moves it up
    needs_sync: bool = False


class PieceOutcome(BaseModel):
    piece_id: str
    index: int
    template_id: str | None
    tier: Tier
    status: PieceStatus
    provider: str | None = None
    hook: str | None = None
    url: str | None = None
    storage_key: str | None = None
    cost_usd: float = 0.0
    reason: str | None = None
    #: the image is a cached asset, not a fresh one (see GeneratedImage.degraded)
    degraded: bool = False


class BatchResult(BaseModel):
    batch_id: str
    avatar_id: str
    avatar_name: str
    status: Literal["completed", "failed"]
    requested: int
    published: int
    rejected: int
    failed: int
    pending_review: int
    cost_usd: float
    total_seconds: float
    step_seconds: dict[str, float]
    cost_breakdown: dict[str, float]
    stand_ins: list[str]
    pieces: list[PieceOutcome]
    #: pieces made from a cached asset, counted apart from fresh ones
    degraded: int = 0
    #: passed pieces kept in the local store during an object-store outage (not yet
    #: published: `studio storage-sync` uploads them)
    stored_locally: int = 0
