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
    "food": (
        "Made this from scratch, and it was worth it.",
        "Recipe drop: save it for the weekend.",
        "The smell alone. Would you try it?",
        "Comfort food, upgraded.",
    ),
    "wellness": (
        "Five quiet minutes that change the whole day.",
        "Breathe in, slow down, reset.",
        "My little ritual for a calmer week.",
        "Gentle reminder: rest is productive too.",
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
    "food": ("#foodie", "#homecooking", "#recipe"),
    "wellness": ("#wellness", "#selfcare", "#mindful"),
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


def _from_pattern(
    pattern: str, spec: PieceSpec, avatar: AvatarRef, platform_tag: str
) -> str | None:
    """Fill a template's hook pattern (placeholders avatar_name, niche, platform_tag)."""
    values = _Defaults(
        avatar_name=avatar.name, name=avatar.name, niche=spec.niche or avatar.niche or "",
        platform_tag=platform_tag, category=spec.category or "", n=str(spec.index + 1),
    )
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
        if any(not f.isidentifier() for f in fields):
            return None
        text = pattern.format_map(values)
    except (ValueError, IndexError, KeyError):
        return None
    return " ".join(text.split()) or None


def _topic(spec: PieceSpec, avatar: AvatarRef) -> str:
    for label in (spec.niche, spec.category, avatar.niche):
        if label and label.lower() in PHRASES:
            return label.lower()
    return "general"


def _tags(topic: str, seed: int, allowance: int) -> str:
    tags = TAGS[topic]
    chosen = [tags[(seed >> (8 + i)) % len(tags)] for i in range(min(allowance, 2))]
    return " ".join(dict.fromkeys(chosen))


def template_hook_text(spec: PieceSpec, avatar: AvatarRef, platform: Platform) -> str:
    """The template's pattern, else a phrase for its niche, framed for the platform."""
    platform = Platform(platform)
    seed = _seed(spec.piece_id)
    topic = _topic(spec, avatar)
    tags = _tags(topic, seed, style_for(platform).max_hashtags)
    text = _from_pattern(spec.hook_pattern, spec, avatar, tags) if spec.hook_pattern else None
    if text:
        return fit(text, platform)
    bank = PHRASES[topic]
    text = PLATFORM_FRAMES[platform].format(text=bank[seed % len(bank)].format(n=spec.index + 1))
    return fit(f"{text} {tags}".strip(), platform)


def template_hook(spec: PieceSpec, avatar: AvatarRef, platform: Platform) -> Hook:
    return Hook(
        piece_id=spec.piece_id,
        text=template_hook_text(spec, avatar, platform),
        source="template",
        stand_in=True,
    )
