"""Which decisions no reviewer may make, whatever the row says.

Why its own module: these are the policy's rules (studio/moderation/policy.py) read
for a person's decision; they change when the policy does, not when storage does.
- a hard-blocked piece (sexual/minors always, HARD_BLOCKED_CATEGORIES) is never
  approved: its recorded categories and reason are read, and its prompt and caption go
  through the free local screen again (a row edited to `pending_review` stays blocked);
- capa1 is public: a piece is approved as capa1 only if moderation allowed it there,
  i.e. nothing it flagged is barred from capa1 (sexual, profanity) and, when the piece
  is moved up from capa2/capa3, moderation actually checked it (a premium piece held
  because moderation was down was never judged public-safe).
"""

from __future__ import annotations

from typing import Any

from studio.moderation.local import flagged_categories
from studio.moderation.policy import ALLOWED_ABOVE_CAPA1
from studio.moderation.settings import ALWAYS_BLOCKED, ModerationSettings


def hard_blocked(
    verdict: dict[str, Any], texts: list[str], tier: str, settings: ModerationSettings | None = None
) -> list[str]:
    """The hard-blocked categories this piece carries (recorded or found now); [] if none."""
    settings = settings or ModerationSettings()
    hard = set(settings.hard_blocked_categories) | {ALWAYS_BLOCKED}
    found = {c for c in verdict.get("categories") or [] if c in hard}
    reason = str(verdict.get("reason") or "")
    if reason.startswith("hard-blocked"):
        found.update(c.strip() for c in reason.removeprefix("hard-blocked category").split(","))
        found.discard("")
    for text in texts:
        if text:
            found.update(c for c in flagged_categories(text, tier) if c in hard)
    return sorted(found)


def capa1_refusal(verdict: dict[str, Any], texts: list[str], current_tier: str) -> str | None:
    """Why this piece may not be published as capa1, or None when moderation allowed it."""
    flagged = {c for c in verdict.get("categories") or []}
    for text in texts:
        if text:
            flagged.update(flagged_categories(text, "capa1"))
    barred = sorted(c for c in flagged if c in ALLOWED_ABOVE_CAPA1)
    if barred:
        return f"capa1 is public and moderation flagged {', '.join(barred)}: keep capa2/capa3"
    if str(verdict.get("status") or "") == "retiered" or "moved to" in str(
        verdict.get("reason") or ""
    ):
        return "moderation moved this piece off capa1: it cannot be made public again"
    if current_tier != "capa1":
        checked = str(verdict.get("checked_by") or "none")
        unavailable = "moderation unavailable" in str(verdict.get("reason") or "")
        if checked in ("none", "") or unavailable:
            return (
                f"moderation never checked this {current_tier} piece, so it was never "
                "judged public-safe: approve it in its own tier"
            )
    return None
