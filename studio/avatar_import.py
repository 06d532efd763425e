"""`studio avatar import FILE.yaml`: many avatars created or updated from one file.

Why validated whole first: a studio sets up its avatars from one file; one bad entry
half-applied would leave some avatars new and others old, and the operator would have
to work out which. Every entry is read (a pydantic model per entry: unknown keys are
refused), checked as `avatar add/update` check it, and planned against the database
before anything is written; the plan is then applied in one transaction.

The file: a YAML list of avatars, or a mapping with one key `avatars` holding that list.
Each entry has `name` (the key: an existing avatar of that name is updated), `niche`
(needed for a new avatar), `lora_weights_url`, `cadence`, `active` and any profile
field (studio/avatar_profiles.py). A key left out leaves the value as it is; a profile
field set to null goes back to its default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.avatar_profiles import PROFILE_FIELDS, check_profile, shown_url, stored_profile
from studio.avatars import (
    _check_cadence,
    _check_name,
    about_avatar,
    add_avatar,
    check_lora_url,
    update_avatar,
)
from studio.db.models import Avatar
from studio.request import MAX_NICHE_CHARS, BatchRequestError, check_name

#: an avatar file is a few KB; a much larger one is not an avatar file
MAX_FILE_BYTES = 1_000_000
#: the avatar's own fields an entry may set besides the profile
IDENTITY_FIELDS = ("niche", "lora_weights_url", "cadence", "active")


class AvatarEntry(BaseModel):
    """One avatar of the file. Profile values are typed loosely here and checked by
    studio/avatar_profiles.py, so a bad one is said as `avatar add` says it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    niche: str | None = None
    lora_weights_url: str | None = None
    cadence: str | None = None
    active: bool | None = None
    trigger_words: Any = None
    lora_strength: Any = None
    tier_mix: Any = None
    platforms: Any = None
    pieces_per_run: Any = None
    daily_budget_usd: Any = None
    workflow: Any = None
    checkpoint: Any = None
    format: Any = None


@dataclass
class CheckedEntry:
    """An entry whose every value passed: identity fields given, profile in stored form."""

    number: int
    name: str
    identity: dict[str, Any]
    profile: dict[str, Any]


@dataclass
class PlannedChange:
    """What importing one entry does: create, update (field -> (old, new)) or nothing."""

    name: str
    action: Literal["create", "update", "unchanged"]
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    entry: CheckedEntry | None = None

    def describe(self) -> str:
        """One line for the operator (the dry run prints these; a LoRA URL's query,
        where a signed link keeps its credential, is not shown)."""
        if self.action == "unchanged":
            return f"unchanged {self.name}"

        def shown(key: str, value: Any) -> str:
            return repr(shown_url(value) if key == "lora_weights_url" else value)

        if self.action == "create":
            values = ", ".join(
                f"{key}={shown(key, new)}" for key, (_, new) in self.changes.items()
            )
            return f"create {self.name}: {values}"
        values = ", ".join(
            f"{key} {shown(key, old)} -> {shown(key, new)}"
            for key, (old, new) in self.changes.items()
        )
        return f"update {self.name}: {values}"


def _refusal(number: int, raw: Any, field_name: str, message: str) -> BatchRequestError:
    name = raw.get("name") if isinstance(raw, dict) else None
    who = f"avatar {name[:60]!r} (entry {number})" if isinstance(name, str) else f"entry {number}"
    return BatchRequestError(field_name, f"{who}: {message}")


def _entries(data: Any, source: str) -> list[Any]:
    if isinstance(data, dict):
        extra = [key for key in data if key != "avatars"]
        if extra or "avatars" not in data:
            raise BatchRequestError(
                "file", f"{source}: give a list of avatars, or a mapping with only `avatars:`"
                + (f" (unknown key {extra[0]!r})" if extra else "")
            )
        data = data["avatars"]
    if not isinstance(data, list):
        raise BatchRequestError("file", f"{source}: give a list of avatars")
    if not data:
        raise BatchRequestError("file", f"{source}: the file lists no avatars")
    return data


def read_avatar_file(path: Path) -> list[AvatarEntry]:
    """The file's entries, shape-checked (unknown keys, wrong types); BatchRequestError
    naming the file, or the entry and field."""
    source = path.name
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise BatchRequestError(
                "file", f"{source}: {size} bytes; an avatar file is at most {MAX_FILE_BYTES}"
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BatchRequestError("file", f"{path}: no such file") from None
    except IsADirectoryError:
        raise BatchRequestError("file", f"{path}: is a directory, not a YAML file") from None
    except UnicodeDecodeError:
        raise BatchRequestError("file", f"{source}: not UTF-8 text") from None
    except OSError as exc:
        raise BatchRequestError("file", f"{path}: cannot be read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise BatchRequestError("file", f"{source}: not valid YAML{where}: {problem}") from None
    entries = []
    for number, raw in enumerate(_entries(data, source), start=1):
        if not isinstance(raw, dict):
            raise _refusal(number, raw, "entry", "give a mapping with name, niche, ...")
        try:
            entries.append(AvatarEntry.model_validate(raw))
        except ValidationError as exc:
            error = exc.errors()[0]
            field_name = str(error["loc"][0]) if error["loc"] else "entry"
            if error["type"] == "extra_forbidden":
                known = ", ".join(AvatarEntry.model_fields)
                message = f"unknown key {field_name!r}; an entry takes {known}"
            elif error["type"] == "missing":
                message = "is missing"
            else:
                message = error["msg"]
            raise _refusal(number, raw, field_name, message) from None
    return entries


def check_entries(entries: list[AvatarEntry]) -> list[CheckedEntry]:
    """Every value of every entry checked as `avatar add` checks it (no database)."""
    checked: list[CheckedEntry] = []
    seen: dict[str, int] = {}
    for number, entry in enumerate(entries, start=1):
        with about_avatar(entry.name, f" (entry {number})"):
            given = entry.model_fields_set
            try:
                _check_name(entry.name)
            except BatchRequestError as exc:
                raise BatchRequestError(exc.field, f"entry {number}: {exc.message}") from None
            if entry.name in seen:
                raise BatchRequestError(
                    "name", f"avatar {entry.name!r} is listed twice (entries {seen[entry.name]} "
                    f"and {number})"
                )
            seen[entry.name] = number
            identity: dict[str, Any] = {}
            for key in IDENTITY_FIELDS:
                if key not in given:
                    continue
                value = getattr(entry, key)
                if value is None:
                    raise BatchRequestError(key, "is null; give a value or leave the key out")
                identity[key] = value
            if "niche" in identity:
                identity["niche"] = identity["niche"].lower()
                check_name("niche", identity["niche"], MAX_NICHE_CHARS)
            if "lora_weights_url" in identity:
                check_lora_url(identity["lora_weights_url"], "lora_weights_url")
            if "cadence" in identity:
                _check_cadence(identity["cadence"])
            profile = check_profile(
                {key: getattr(entry, key) for key in PROFILE_FIELDS if key in given}
            )
        checked.append(CheckedEntry(number, entry.name, identity, profile))
    return checked


def plan_import(session: Session, entries: list[CheckedEntry]) -> list[PlannedChange]:
    """What importing `entries` would do, reading the database, writing nothing."""
    plan: list[PlannedChange] = []
    for entry in entries:
        avatar = session.scalar(select(Avatar).where(Avatar.name == entry.name))
        wanted = {**entry.identity, **entry.profile}
        if avatar is None:
            if "niche" not in entry.identity:
                raise BatchRequestError(
                    "niche",
                    f"avatar {entry.name!r} (entry {entry.number}): a new avatar needs a niche",
                )
            plan.append(PlannedChange(
                entry.name, "create", {key: (None, value) for key, value in wanted.items()}, entry
            ))
            continue
        current = {**{key: getattr(avatar, key) for key in IDENTITY_FIELDS},
                   **stored_profile(avatar)}
        changes = {
            key: (current[key], value) for key, value in wanted.items() if current[key] != value
        }
        plan.append(PlannedChange(
            entry.name, "update" if changes else "unchanged", changes, entry
        ))
    return plan


def apply_import(session: Session, plan: list[PlannedChange]) -> None:
    """Write a plan (the caller's transaction commits it, or nothing)."""
    for change in plan:
        entry = change.entry
        if entry is None or change.action == "unchanged":
            continue
        if change.action == "create":
            add_avatar(
                session,
                entry.name,
                entry.identity["niche"],
                entry.identity.get("lora_weights_url"),
                entry.identity.get("cadence", "daily"),
                entry.identity.get("active", True),
                profile=entry.profile,
            )
            continue
        identity = {key: value for key, value in entry.identity.items() if key in change.changes}
        profile = {key: value for key, value in entry.profile.items() if key in change.changes}
        update_avatar(session, entry.name, **identity, profile=profile)


def import_avatars(session: Session, path: Path, dry_run: bool = False) -> list[PlannedChange]:
    """Read, check and plan the whole file, then (unless `dry_run`) write it. Nothing is
    written unless every entry passed."""
    plan = plan_import(session, check_entries(read_avatar_file(path)))
    if not dry_run:
        apply_import(session, plan)
    return plan
