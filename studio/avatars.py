"""Avatars: add, list and resolve by id or name."""

from __future__ import annotations

import uuid

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from studio.db.models import Avatar
from studio.request import BatchRequestError
from studio.types import AvatarRef

CADENCES = ("on-demand", "daily", "weekly", "monthly")


def add_avatar(
    session: Session,
    name: str,
    niche: str,
    lora_weights_url: str | None,
    cadence: str = "daily",
    active: bool = True,
) -> Avatar:
    if cadence not in CADENCES:
        raise BatchRequestError(
            "cadence", f"unknown cadence {cadence!r}; use {', '.join(CADENCES)}"
        )
    if session.scalar(select(Avatar).where(Avatar.name == name)) is not None:
        raise BatchRequestError("name", f"an avatar named {name!r} exists already")
    avatar = Avatar(
        id=str(uuid.uuid4()),
        name=name,
        niche=niche,
        lora_weights_url=lora_weights_url,
        cadence=cadence,
        active=active,
    )
    session.add(avatar)
    session.flush()
    return avatar


def find_avatar(session: Session, id_or_name: str) -> Avatar | None:
    return session.scalar(
        select(Avatar).where(or_(Avatar.id == id_or_name, Avatar.name == id_or_name))
    )


def resolve_avatar(session: Session, id_or_name: str) -> AvatarRef:
    """The spec's validate step: the avatar exists and has trained LoRA weights."""
    avatar = find_avatar(session, id_or_name)
    if avatar is None:
        raise BatchRequestError(
            "avatar_id", f"no avatar with id or name {id_or_name!r}; see `studio avatar list`"
        )
    if not avatar.lora_weights_url:
        raise BatchRequestError(
            "avatar_id",
            f"avatar {avatar.name!r} has no lora_weights_url; train its LoRA (System 1) and "
            "set the weights URL first",
        )
    return to_ref(avatar)


def to_ref(avatar: Avatar) -> AvatarRef:
    return AvatarRef(
        id=avatar.id, name=avatar.name, niche=avatar.niche, lora_weights_url=avatar.lora_weights_url
    )


def list_avatars(
    session: Session, cadence: str | None = None, active_only: bool = False
) -> list[Avatar]:
    stmt = select(Avatar).order_by(Avatar.name)
    if cadence:
        stmt = stmt.where(Avatar.cadence == cadence)
    if active_only:
        stmt = stmt.where(Avatar.active.is_(True))
    return list(session.scalars(stmt))
