"""Which moderator a batch uses."""

from __future__ import annotations

from studio.moderation.local import LocalModerator


def build_moderator() -> LocalModerator:
    return LocalModerator()


def moderator_status() -> dict[str, object]:
    moderator = build_moderator()
    return {"moderator": moderator.name, "stand_in": moderator.stand_in}
