"""Template-based hooks: what a piece gets when no model wrote one for it.

Used by the offline stand-in writer and, per piece, by the Claude writer when the API
fails, the breaker is open or the answer lacks a usable hook. The text comes from the
template's own hook pattern when it has one, else from a phrase bank per template
category; the platform decides hashtags and length. The choice is seeded by the
piece id, so a re-run writes the same hook and neighbouring pieces differ.
"""

from __future__ import annotations

import hashlib
import string

from studio.hooks.platforms import fit, style_for
from studio.types import AvatarRef, Hook, PieceSpec, Platform

PHRASES: dict[str, tuple[str, ...]] = {
    "fitness": (
        "Day {n} of showing up, no excuses.",
        "This is what consistency looks like.",
        "Sweat now, glow later. Who is training with me?",
        "New routine unlocked. Save this for your next session.",
    ),
    "lifestyle": (
        "Slow mornings are my favourite kind of luxury.",
        "A little snapshot of my week.",
        "Tell me this isn't the perfect vibe.",
        "Small moments, big mood.",
    ),
    "fashion": (
        "Outfit check: rate it from 1 to 10.",
        "The look I keep coming back to.",
        "Which one would you wear: left or right?",
        "New fit, same confidence.",
    ),
    "travel": (
        "Wish you were here.",
        "Found a place that feels like a postcard.",
        "Adding this spot to everyone's list.",
        "Passport stamps and golden hours.",
    ),
    "beauty": (
        "Five minutes, one glow.",
        "My go-to look, step by step.",
        "Soft light, softer mood.",
        "The routine you asked for.",
    ),
    "general": (
        "Caught in the moment.",
        "A new set is live. Which shot is your favourite?",
        "Just a little something for you today.",
        "Here is what I have been working on.",
    ),
}

TAGS: dict[str, tuple[str, ...]] = {
    "fitness": ("#fitness", "#workout", "#motivation"),
    "lifestyle": ("#lifestyle", "#dailyvibes", "#weekend"),
    "fashion": ("#ootd", "#style", "#fashion"),
    "travel": ("#travel", "#wanderlust", "#explore"),
    "beauty": ("#beauty", "#glow", "#makeup"),
    "general": ("#newpost", "#behindthescenes", "#creator"),
}

PLATFORM_FRAMES: dict[Platform, str] = {
    Platform.INSTAGRAM: "{text}",
    Platform.TIKTOK: "POV: {text}",
    Platform.TWITTER: "{text}",
    Platform.PATREON: "Behind the scenes: {text}",
    Platform.ONLYFANS: "New set: {text}",
}


def _seed(piece_id: str) -> int:
    return int.from_bytes(hashlib.sha256(piece_id.encode()).digest()[:8], "big")


class _Defaults(dict):
    def __missing__(self, key: str) -> str:
        return ""


def _from_pattern(pattern: str, spec: PieceSpec, avatar: AvatarRef) -> str | None:
    """Fill a template's hook pattern; only named fields are allowed, missing ones blank."""
    values = _Defaults(
        name=avatar.name, avatar=avatar.name, niche=avatar.niche or "",
        category=spec.category or "", n=str(spec.index + 1),
    )
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
        if any(not f.isidentifier() for f in fields):
            return None
        text = pattern.format_map(values)
    except (ValueError, IndexError, KeyError):
        return None
    return " ".join(text.split()) or None


def template_hook_text(spec: PieceSpec, avatar: AvatarRef, platform: Platform) -> str:
    platform = Platform(platform)
    seed = _seed(spec.piece_id)
    category = (spec.category or avatar.niche or "general").lower()
    bank = PHRASES.get(category, PHRASES["general"])
    text = _from_pattern(spec.hook_pattern, spec, avatar) if spec.hook_pattern else None
    if not text:
        text = bank[seed % len(bank)].format(n=spec.index + 1)
    text = PLATFORM_FRAMES[platform].format(text=text)
    allowance = style_for(platform).max_hashtags
    if allowance:
        tags = TAGS.get(category, TAGS["general"])
        chosen = [tags[(seed >> 8 + i) % len(tags)] for i in range(min(allowance, 2))]
        text = f"{text} {' '.join(dict.fromkeys(chosen))}"
    return fit(text, platform)


def template_hook(spec: PieceSpec, avatar: AvatarRef, platform: Platform) -> Hook:
    return Hook(
        piece_id=spec.piece_id,
        text=template_hook_text(spec, avatar, platform),
        source="template",
        stand_in=True,
    )
