"""An avatar's profile: what makes one avatar's content its own, and its checks.

Why a profile: a LoRA trained on a person needs its trigger word in every prompt (or
the face does not appear), and each avatar has its own LoRA strength, tier mix,
platforms, run size, daily budget and image settings (issue 18). Every value is checked
here, once, for `studio avatar add/update`, for `studio avatar import` and for a stored
row when a batch resolves its avatar, so a bad value is refused naming its field before
anything is written or spent.

Empty/None means "the studio-wide default" (settings or the request), which is what an
avatar added before profiles existed has.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import ValidationError

from studio.request import (
    MAX_PIECES,
    BatchRequestError,
    TierShares,
    check_free_text,
    check_name,
)
from studio.types import TIERS, Platform

#: the profile's fields, in the order `avatar show` prints them (AvatarRef's names)
PROFILE_FIELDS = (
    "trigger_words",
    "lora_strength",
    "tier_mix",
    "platforms",
    "pieces_per_run",
    "daily_budget_usd",
    "workflow",
    "checkpoint",
    "format",
)
#: what a field holds when it is not set (an avatar added before profiles holds these)
DEFAULTS: dict[str, Any] = {
    "trigger_words": [],
    "lora_strength": 1.0,
    "tier_mix": None,
    "platforms": [],
    "pieces_per_run": None,
    "daily_budget_usd": None,
    "workflow": None,
    "checkpoint": None,
    "format": None,
}
#: LoRA strength range: Replicate's FLUX LoRA models take `lora_scale` -1..2 and
#: ComfyUI's LoraLoader -100..100; negative strengths invert a LoRA (never what a
#: face LoRA wants), so 0..2 is what every provider accepts and means
MIN_LORA_STRENGTH = 0.0
MAX_LORA_STRENGTH = 2.0
MAX_TRIGGER_WORDS = 10
MAX_TRIGGER_CHARS = 100
MAX_PATH_CHARS = 1024
MAX_CHECKPOINT_CHARS = 255
PLATFORMS = tuple(platform.value for platform in Platform)


def _number(field: str, value: Any, what: str) -> float:
    """A real number (never a bool, NaN or infinity); BatchRequestError otherwise."""
    if isinstance(value, bool) or value is None:
        raise BatchRequestError(field, f"{value!r} is not {what}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BatchRequestError(field, f"{str(value)[:40]!r} is not {what}") from None
    if not math.isfinite(number):
        raise BatchRequestError(field, f"{value!r} is not {what}")
    return number


def _text_list(field: str, value: Any) -> list[Any]:
    """A list of the field's items; one string is a list of one."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return list(value)
    raise BatchRequestError(field, f"give a list, not {type(value).__name__}")


def check_trigger_words(value: Any) -> list[str]:
    words = _text_list("trigger_words", value)
    if len(words) > MAX_TRIGGER_WORDS:
        raise BatchRequestError(
            "trigger_words", f"{len(words)} trigger words; at most {MAX_TRIGGER_WORDS}"
        )
    for word in words:
        if not isinstance(word, str):
            raise BatchRequestError("trigger_words", f"{word!r} is not text")
        check_name("trigger_words", word, MAX_TRIGGER_CHARS)
    seen = [word for i, word in enumerate(words) if word in words[:i]]
    if seen:
        raise BatchRequestError("trigger_words", f"{seen[0]!r} is given twice")
    return words


def check_lora_strength(value: Any) -> float:
    strength = _number("lora_strength", value, "a number")
    if not MIN_LORA_STRENGTH <= strength <= MAX_LORA_STRENGTH:
        raise BatchRequestError(
            "lora_strength",
            f"{strength:g} is outside {MIN_LORA_STRENGTH:g}..{MAX_LORA_STRENGTH:g} (1 is the "
            "LoRA as trained; Replicate accepts at most 2)",
        )
    return strength


def _named_shares(text: str) -> dict[str, str] | None:
    """"capa1=0.6,capa2=0.3,capa3=0.1" as a dict; None for the plain "0.6,0.3,0.1"."""
    if "=" not in text:
        return None
    shares: dict[str, str] = {}
    for part in text.split(","):
        key, sep, ratio = part.partition("=")
        if not sep:
            raise BatchRequestError(
                "tier_mix", f"{part.strip()!r} is not tier=share (e.g. capa1=0.6)"
            )
        shares[key.strip()] = ratio.strip()
    return shares


def check_tier_mix(value: Any) -> dict[str, float]:
    """Shares per tier summing to 1: a dict, three numbers, "0.6,0.3,0.1" or
    "capa1=0.6,capa2=0.3,capa3=0.1" (read by the request's own TierShares)."""
    if isinstance(value, str):
        value = _named_shares(value) or value
    if not isinstance(value, dict | list | tuple | str):
        raise BatchRequestError(
            "tier_mix", "give three shares like 0.6,0.3,0.1 or capa1=0.6,capa2=0.3,capa3=0.1"
        )
    if isinstance(value, dict):
        unknown = [key for key in value if str(key).removesuffix("_ratio") not in TIERS]
        if unknown:
            raise BatchRequestError(
                "tier_mix", f"unknown tier {unknown[0]!r}; use capa1, capa2 and capa3"
            )
        missing = [tier for tier in TIERS if tier not in
                   {str(key).removesuffix("_ratio") for key in value}]
        if missing:  # TierShares would fill the default share in silently
            raise BatchRequestError("tier_mix", f"no share for {missing[0]}; give all three")
    try:
        shares = TierShares.model_validate(value).as_dict()
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] in ("float_parsing", "float_type"):
            message = f"{error.get('input')!r} is not a number"
        raise BatchRequestError("tier_mix", f"{where}: {message}" if where else message) from None
    total = sum(shares.values())
    if abs(total - 1.0) > 1e-6:
        raise BatchRequestError(
            "tier_mix", f"shares sum to {total:g}; they must sum to 1 (e.g. 0.6,0.3,0.1)"
        )
    return shares


def check_platforms(value: Any) -> list[str]:
    platforms = [p.lower() if isinstance(p, str) else p for p in _text_list("platforms", value)]
    for platform in platforms:
        if platform not in PLATFORMS:
            raise BatchRequestError(
                "platforms", f"unknown platform {platform!r}; use {', '.join(PLATFORMS)}"
            )
    twice = [p for i, p in enumerate(platforms) if p in platforms[:i]]
    if twice:
        raise BatchRequestError("platforms", f"{twice[0]!r} is given twice")
    return platforms


def check_pieces_per_run(value: Any) -> int:
    number = _number("pieces_per_run", value, "a whole number")
    if number != int(number):
        raise BatchRequestError("pieces_per_run", f"{value!r} is not a whole number")
    if not 1 <= number <= MAX_PIECES:
        raise BatchRequestError(
            "pieces_per_run", f"{int(number)} is outside 1..{MAX_PIECES}; pick a size in range"
        )
    return int(number)


def check_daily_budget(value: Any) -> float:
    budget = _number("daily_budget_usd", value, "an amount in USD")
    if budget < 0:
        raise BatchRequestError("daily_budget_usd", f"{budget:g} is negative; give 0 or more")
    return budget


def check_workflow(value: Any) -> str:
    """A path of an API-format ComfyUI workflow, or a shipped workflow's name.

    A file found here is read and checked now (JSON, API format, bindings, an output
    node), so a UI export is refused when it is set rather than at the first batch. One
    not found here may live where the worker runs: it is checked there, against the
    server's nodes and models too, when a batch starts and before anything is spent."""
    if not isinstance(value, str) or not value.strip():
        raise BatchRequestError("workflow", "give the path of a workflow JSON file")
    check_free_text("workflow", value)
    if value != value.strip():
        raise BatchRequestError("workflow", f"{value!r} starts or ends with a space")
    if len(value) > MAX_PATH_CHARS:
        raise BatchRequestError(
            "workflow", f"the path has {len(value)} characters; at most {MAX_PATH_CHARS}"
        )
    from studio.providers.comfyui_workflow import (
        WorkflowError,
        load_workflow,
        resolve_workflow,
    )

    try:
        path = resolve_workflow(value)
    except WorkflowError:
        return value  # not on this machine: checked where the batch runs
    try:
        load_workflow(path)
    except WorkflowError as exc:
        raise BatchRequestError("workflow", str(exc)) from None
    return value


def check_checkpoint(value: Any) -> str:
    """A checkpoint file name as the ComfyUI server lists it (it may hold a sub-folder)."""
    if not isinstance(value, str):
        raise BatchRequestError("checkpoint", f"{value!r} is not a file name")
    return check_name("checkpoint", value, MAX_CHECKPOINT_CHARS)


def check_format(value: Any) -> str:
    """An aspect ratio "W:H", as studio.formats reads it (its normal form is stored)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 9:16 as the base-60 number 556
        raise BatchRequestError(
            "format", f"{value!r} is a number; write the ratio in quotes, e.g. '9:16'"
        )
    if not isinstance(value, str):
        raise BatchRequestError("format", f"{value!r} is not an aspect ratio such as 9:16")
    from studio.formats import parse_aspect_ratio

    try:
        return parse_aspect_ratio(value)
    except ValueError as exc:
        message = str(exc)
        raise BatchRequestError("format", message.removeprefix("format: ")) from None


_CHECKS = {
    "trigger_words": check_trigger_words,
    "lora_strength": check_lora_strength,
    "tier_mix": check_tier_mix,
    "platforms": check_platforms,
    "pieces_per_run": check_pieces_per_run,
    "daily_budget_usd": check_daily_budget,
    "workflow": check_workflow,
    "checkpoint": check_checkpoint,
    "format": check_format,
}


def check_profile(values: Mapping[str, Any]) -> dict[str, Any]:
    """The given profile fields as stored (normal forms); None resets a field to its
    default. BatchRequestError naming the first bad field."""
    checked: dict[str, Any] = {}
    for field, value in values.items():
        if field not in _CHECKS:
            raise BatchRequestError(
                field, f"not an avatar profile field; use {', '.join(PROFILE_FIELDS)}"
            )
        checked[field] = default(field) if value is None else _CHECKS[field](value)
    return checked


def default(field: str) -> Any:
    """The field's unset value (a fresh list: never the shared one)."""
    value = DEFAULTS[field]
    return list(value) if isinstance(value, list) else value


def stored_profile(avatar: Any) -> dict[str, Any]:
    """The profile fields of an avatar row (NULLs of an unset field as its default)."""
    profile = {}
    for field in PROFILE_FIELDS:
        value = getattr(avatar, field, None)
        profile[field] = default(field) if value is None else value
    return profile


def shown_url(url: str | None) -> str | None:
    """A LoRA URL without its query and fragment, for output: a signed download link
    carries its credential there, and command output ends up in tickets and chat."""
    if not url:
        return url
    parts = urlsplit(url)
    hidden = "?…" if parts.query or parts.fragment else ""
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")) + hidden
