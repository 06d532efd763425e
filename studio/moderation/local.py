"""The local rule-based moderator: the offline stand-in for OpenAI moderation.

It scores text only (the hook and the prompt) against term lists per moderation
category, and reports flags in the same category names as OpenAI's endpoint so the
same policy applies to both.
"""

from __future__ import annotations

import re

from studio.moderation.base import ModerationItem, ModerationScores

# Neutral trigger terms per category; kept deliberately tame (see the content policy).
CATEGORY_TERMS: dict[str, tuple[str, ...]] = {
    "sexual": ("nude", "nudity", "explicit", "nsfw", "topless", "xxx"),
    "sexual/minors": ("underage", "minor", "child", "teen", "schoolgirl", "schoolboy"),
    "self-harm/intent": ("kill myself", "end my life", "self harm"),
    "violence/graphic": ("gore", "dismember", "mutilat"),
    "hate": ("racial slur",),
}


def _matches(text: str, term: str) -> bool:
    return re.search(rf"\b{re.escape(term)}", text) is not None


def flagged_categories(text: str) -> list[str]:
    lowered = text.lower()
    flagged = [
        category
        for category, terms in CATEGORY_TERMS.items()
        if any(_matches(lowered, term) for term in terms)
    ]
    # OpenAI reports sexual alongside sexual/minors; keep the same shape
    if "sexual/minors" in flagged and "sexual" in flagged:
        return flagged
    return flagged


class LocalModerator:
    name = "local"
    stand_in = True

    async def score(self, items: list[ModerationItem]) -> dict[str, ModerationScores]:
        return {
            item.piece_id: ModerationScores(
                piece_id=item.piece_id, flagged_categories=flagged_categories(item.text)
            )
            for item in items
        }
