"""Which moderator a batch uses: OpenAI when OPENAI_API_KEY is set, local rules otherwise.

Both report the endpoint's category names and go through the same policy; the local
one also serves as the free screen run on every piece (see `policy.SafetyReview`).

The OpenAI moderator (and with it the `openai` SDK, about half a second to import) is
imported only when it is built: a batch on the local stand-in never pays for it.
"""

from __future__ import annotations

import logging

from studio.ledger.store import CostLedger
from studio.moderation.base import Moderator
from studio.moderation.local import LocalModerator
from studio.moderation.policy import SafetyReview
from studio.moderation.screen import PromptScreen
from studio.moderation.settings import ModerationSettings

logger = logging.getLogger("studio.moderation")

_ANNOUNCED: set[str] = set()


def _announce(message: str) -> None:
    if message not in _ANNOUNCED:
        _ANNOUNCED.add(message)
        logger.info(message)


def build_moderator(settings: ModerationSettings | None = None) -> Moderator:
    settings = settings or ModerationSettings()
    if not settings.configured:
        _announce("Moderator | Using: local stand-in, text only (OPENAI_API_KEY not set)")
        return LocalModerator()
    _announce(f"Moderator | Using: openai | Model: {settings.model}")
    from studio.moderation.openai_moderator import OpenAIModerator

    return OpenAIModerator(settings, ledger=CostLedger())  # calls recorded (studio/ledger)


def build_safety_review(settings: ModerationSettings | None = None) -> SafetyReview:
    settings = settings or ModerationSettings()
    return SafetyReview(build_moderator(settings), settings, screen=LocalModerator())


def build_prompt_screen(settings: ModerationSettings | None = None) -> PromptScreen:
    """The screen run on prompts before step 2 (see `studio.moderation.screen`)."""
    settings = settings or ModerationSettings()
    return PromptScreen(build_moderator(settings), settings, local=LocalModerator())


def moderator_status(settings: ModerationSettings | None = None) -> dict[str, object]:
    settings = settings or ModerationSettings()
    return {
        "moderator": "openai" if settings.configured else "local",
        "stand_in": not settings.configured,
        "model": settings.model if settings.configured else None,
        "sample_rate": settings.sample_rate,
        "skip_categories": settings.skip_categories,
        "hard_blocked": settings.hard_blocked_categories,
        "capa1_sexual_action": settings.capa1_sexual_action,
    }
