"""Avatars: add, update, deactivate, list and resolve by id or name.

An avatar's name and niche reach log lines, artifacts, hooks and prompts, and its LoRA
URL is handed to image providers that fetch it: all three are checked when an avatar is
added or updated, and the URL again when a batch resolves the avatar (rows stored before
the check). Its profile (trigger words, LoRA strength, tier mix, platforms, run size,
budget, workflow, checkpoint, format: studio/avatar_profiles.py) is checked the same
way, and every refusal names the avatar and the field.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from studio.avatar_profiles import PROFILE_FIELDS, check_profile, default, stored_profile
from studio.db.models import Avatar
from studio.request import (
    MAX_NAME_CHARS,
    MAX_NICHE_CHARS,
    BatchRequestError,
    check_name,
    control_character,
)
from studio.types import AvatarRef

CADENCES = ("on-demand", "daily", "weekly", "monthly")
#: a LoRA URL is stored as text; a few KB is already no URL
MAX_LORA_URL_CHARS = 2048


class LoraSettings(BaseSettings):
    """LORA_URL_SCHEMES: the URL schemes a LoRA weights URL may use (comma-separated).

    Default `https` only: providers download the URL, so `file://` would hand them a
    path on this machine and `http://`/`ftp://` travel unauthenticated. Add a scheme
    (e.g. `https,s3`) only for a store your providers can read.
    """

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    lora_url_schemes: str = Field("https", validation_alias="LORA_URL_SCHEMES")

    @field_validator("lora_url_schemes", mode="before")
    @classmethod
    def _blank_is_default(cls, value: object) -> object:
        return "https" if isinstance(value, str) and not value.strip() else value

    @property
    def schemes(self) -> tuple[str, ...]:
        return tuple(
            part.strip().lower().removesuffix("://")
            for part in self.lora_url_schemes.split(",")
            if part.strip()
        )


def check_lora_url(url: str, field: str = "lora_weights_url", whose: str = "") -> str:
    """Refuse a LoRA URL whose scheme is not allowed (LORA_URL_SCHEMES) or has no host.

    `whose` prefixes the message (e.g. "avatar 'nova': ") so a stored URL is refused by
    the avatar's name.
    """
    bad = control_character(url)
    if bad is not None:
        raise BatchRequestError(field, f"{whose}the URL contains the control character {bad}")
    if len(url) > MAX_LORA_URL_CHARS:
        raise BatchRequestError(
            field, f"{whose}the URL has {len(url)} characters; at most {MAX_LORA_URL_CHARS}"
        )
    schemes = LoraSettings().schemes
    try:
        parts = urlsplit(url)
    except ValueError:
        raise BatchRequestError(field, f"{whose}{url[:80]!r} is not a URL") from None
    if parts.scheme.lower() not in schemes:
        shown = f"{parts.scheme}://" if parts.scheme else repr(url[:80])
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise BatchRequestError(
            field,
            f"{whose}{shown} is not allowed for LoRA weights; use {allowed} (LORA_URL_SCHEMES)",
        )
    if not parts.hostname or url != url.strip() or " " in url:
        raise BatchRequestError(field, f"{whose}{url[:80]!r} is not a URL with a host")
    return url


def _looks_like_an_id(name: str) -> bool:
    try:
        uuid.UUID(name)
    except ValueError:
        return False
    return True


def _check_name(name: str) -> None:
    check_name("name", name, MAX_NAME_CHARS)
    if _looks_like_an_id(name):  # commands take "id or name": a name must not be an id
        raise BatchRequestError("name", f"{name!r} looks like an avatar id; pick a name")


def _check_cadence(cadence: str) -> None:
    if cadence not in CADENCES:
        raise BatchRequestError(
            "cadence", f"unknown cadence {cadence!r}; use {', '.join(CADENCES)}"
        )


def _check_name_free(session: Session, name: str, other_than: str | None = None) -> None:
    taken = session.scalar(select(Avatar).where(Avatar.name == name))
    if taken is not None and taken.id != other_than:
        raise BatchRequestError("name", f"an avatar named {name!r} exists already")


@contextmanager
def about_avatar(name: str, where: str = "") -> Iterator[None]:
    """Refusals raised inside name the avatar: `lora_strength: avatar 'nova': ...`.

    Not for the name itself (its message shows it already) nor an unknown avatar."""
    try:
        yield
    except BatchRequestError as exc:
        if exc.field in ("name", "avatar") or exc.message.startswith("avatar "):
            raise
        shown = repr(name[:60]) if isinstance(name, str) else repr(name)
        raise BatchRequestError(exc.field, f"avatar {shown}{where}: {exc.message}") from None


def add_avatar(
    session: Session,
    name: str,
    niche: str,
    lora_weights_url: str | None,
    cadence: str = "daily",
    active: bool = True,
    profile: Mapping[str, Any] | None = None,
) -> Avatar:
    """Register an avatar; every value is checked first (BatchRequestError naming it).

    `profile`: the profile fields to set (studio/avatar_profiles.py); the rest keep
    their defaults."""
    with about_avatar(name):
        _check_name(name)
        check_name("niche", niche, MAX_NICHE_CHARS)
        if lora_weights_url is not None:
            check_lora_url(lora_weights_url, "lora")
        _check_cadence(cadence)
        checked = check_profile(profile or {})
        _check_name_free(session, name)
    avatar = Avatar(
        id=str(uuid.uuid4()),
        name=name,
        niche=niche,
        lora_weights_url=lora_weights_url,
        cadence=cadence,
        active=active,
        **{field: checked.get(field, default(field)) for field in PROFILE_FIELDS},
    )
    session.add(avatar)
    session.flush()
    return avatar


def get_avatar(session: Session, id_or_name: str) -> Avatar:
    """The avatar, or BatchRequestError naming `avatar` (the commands' argument)."""
    avatar = find_avatar(session, id_or_name)
    if avatar is None:
        raise BatchRequestError(
            "avatar", f"no avatar with id or name {id_or_name!r}; see `studio avatar list`"
        )
    return avatar


def update_avatar(
    session: Session,
    id_or_name: str,
    *,
    name: str | None = None,
    niche: str | None = None,
    lora_weights_url: str | None = None,
    cadence: str | None = None,
    active: bool | None = None,
    profile: Mapping[str, Any] | None = None,
) -> tuple[Avatar, list[str]]:
    """Change the given fields (checked as `add_avatar` checks them); the avatar and the
    names of the fields that changed. Its id, batches and pieces stay as they are.
    `profile`: profile fields to set; a None value resets that field to its default.

    Why: an avatar added without `--lora` could never get one, and a typo in a niche
    stayed for good."""
    avatar = get_avatar(session, id_or_name)
    with about_avatar(avatar.name):
        return _update(session, avatar, name, niche, lora_weights_url, cadence, active, profile)


def _update(
    session: Session,
    avatar: Avatar,
    name: str | None,
    niche: str | None,
    lora_weights_url: str | None,
    cadence: str | None,
    active: bool | None,
    profile: Mapping[str, Any] | None,
) -> tuple[Avatar, list[str]]:
    wanted: dict[str, object] = {}
    if name is not None:
        _check_name(name)
        _check_name_free(session, name, other_than=avatar.id)
        wanted["name"] = name
    if niche is not None:
        check_name("niche", niche, MAX_NICHE_CHARS)
        wanted["niche"] = niche
    if lora_weights_url is not None:
        check_lora_url(lora_weights_url, "lora")
        wanted["lora_weights_url"] = lora_weights_url
    if cadence is not None:
        _check_cadence(cadence)
        wanted["cadence"] = cadence
    if active is not None:
        wanted["active"] = active
    wanted.update(check_profile(profile or {}))
    if not wanted:
        raise BatchRequestError(
            "options",
            "nothing to change; give --name, --niche, --lora, --cadence, --active/--inactive "
            "or a profile option (see `studio avatar update --help`)",
        )
    changed = [key for key, value in wanted.items() if getattr(avatar, key) != value]
    for key in changed:
        setattr(avatar, key, wanted[key])
    session.flush()
    return avatar, changed


def deactivate_avatar(session: Session, id_or_name: str) -> tuple[Avatar, bool]:
    """`avatar remove`: the avatar is made inactive, never deleted (its batches, pieces
    and ledger rows reference it, and the history stays readable); schedules skip it
    and `avatar update --active` brings it back. Returns whether it was active."""
    avatar = get_avatar(session, id_or_name)
    was_active = bool(avatar.active)
    avatar.active = False
    session.flush()
    return avatar, was_active


def find_avatar(session: Session, id_or_name: str) -> Avatar | None:
    """The avatar with this id or name. Text with a control character names none (a NUL
    would reach PostgreSQL as a DataError; such names cannot be added, and one stored
    before that check is still found by its id)."""
    if control_character(id_or_name) is not None:
        return None
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
    # a row stored before URLs were checked (file://, ftp://...) is refused by name
    check_lora_url(avatar.lora_weights_url, "avatar_id", f"avatar {avatar.name!r}: ")
    # a profile written around the checks (SQL, an older tool) is refused the same way
    set_fields = {
        field: value for field, value in stored_profile(avatar).items() if value != default(field)
    }
    try:
        check_profile(set_fields)
    except BatchRequestError as exc:
        raise BatchRequestError(
            "avatar_id", f"avatar {avatar.name!r}: {exc.field}: {exc.message}"
        ) from None
    return to_ref(avatar)


def to_ref(avatar: Avatar) -> AvatarRef:
    """The avatar and its whole profile, detached from the session (what flows read)."""
    profile = stored_profile(avatar)
    tier_mix = profile["tier_mix"]
    return AvatarRef(
        id=avatar.id,
        name=avatar.name,
        niche=avatar.niche,
        lora_weights_url=avatar.lora_weights_url,
        trigger_words=list(profile["trigger_words"]),
        lora_strength=float(profile["lora_strength"]),
        tier_mix=dict(tier_mix) if tier_mix is not None else None,
        platforms=list(profile["platforms"]),
        pieces_per_run=profile["pieces_per_run"],
        daily_budget_usd=profile["daily_budget_usd"],
        workflow=profile["workflow"],
        checkpoint=profile["checkpoint"],
        format=profile["format"],
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
