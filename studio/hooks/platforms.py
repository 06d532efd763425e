"""What a hook may look like on each platform: its length and how many hashtags.

The limits are the part of a caption a viewer sees before "more" (Instagram, TikTok)
or the whole post (Twitter/X), so a hook that respects them is read in full. They go
into the model's instructions and are enforced again on the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from studio.types import Platform


@dataclass(frozen=True)
class HookStyle:
    max_chars: int
    max_hashtags: int
    tone: str


HOOK_STYLES: dict[Platform, HookStyle] = {
    Platform.INSTAGRAM: HookStyle(125, 3, "warm, visual, one emoji at most"),
    Platform.TIKTOK: HookStyle(100, 3, "punchy, curiosity-driven, spoken-style"),
    Platform.TWITTER: HookStyle(240, 1, "witty, conversational, no emoji walls"),
    Platform.PATREON: HookStyle(200, 0, "personal, behind-the-scenes, invites support"),
    Platform.ONLYFANS: HookStyle(200, 0, "friendly, teasing the set without explicit words"),
}


def style_for(platform: Platform | str) -> HookStyle:
    return HOOK_STYLES[Platform(platform)]


def clip(text: str, max_chars: int) -> str:
    """Cut at the last word boundary that fits, with an ellipsis, never mid-word."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 1]
    if " " in cut:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip(" ,;:-") + "…"


def limit_hashtags(text: str, max_hashtags: int) -> str:
    """Drop hashtags past the platform's allowance (keeps the first ones)."""
    kept: list[str] = []
    seen = 0
    for word in text.split():
        if word.startswith("#") and len(word) > 1:
            seen += 1
            if seen > max_hashtags:
                continue
        kept.append(word)
    return " ".join(kept)


def fit(text: str, platform: Platform | str) -> str:
    style = style_for(platform)
    return clip(limit_hashtags(text, style.max_hashtags), style.max_chars)
