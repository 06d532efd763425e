"""The seam moderators implement.

A moderator only reports which categories it flagged for each piece; whether that
rejects, re-tiers or passes the piece is the policy's decision (studio.moderation.policy),
so the always-blocked categories hold whichever moderator is configured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from studio.types import Tier


@dataclass(frozen=True)
class ModerationItem:
    piece_id: str
    tier: Tier
    custom: bool
    text: str
    image_path: str | None = None
    # the template's category and niche: SKIP_SAFETY_CHECK_CATEGORIES may name either
    category: str | None = None
    niche: str | None = None


@dataclass
class ModerationScores:
    piece_id: str
    flagged_categories: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)


class Moderator(Protocol):
    name: str
    stand_in: bool

    async def score(self, items: list[ModerationItem]) -> dict[str, ModerationScores]: ...
