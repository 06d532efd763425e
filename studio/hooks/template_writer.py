"""Template-based hooks: the offline stand-in for the LLM hook writer.

Each template carries a hook pattern; filling it with the avatar and platform gives a
usable caption at no cost. The LLM writer falls back to this per piece.
"""

from __future__ import annotations

from studio.types import AvatarRef, Hook, HookBatch, PieceSpec, Platform

PLATFORM_TAGS = {
    Platform.INSTAGRAM: "#instadaily",
    Platform.TIKTOK: "#fyp",
    Platform.TWITTER: "",
    Platform.PATREON: "(patrons first)",
    Platform.ONLYFANS: "(subscribers first)",
}
PLATFORM_LIMITS = {
    Platform.INSTAGRAM: 2200,
    Platform.TIKTOK: 2200,
    Platform.TWITTER: 280,
    Platform.PATREON: 1000,
    Platform.ONLYFANS: 1000,
}
DEFAULT_PATTERN = "New from {avatar_name}: a fresh {niche} moment. {platform_tag}"


def template_hook(spec: PieceSpec, avatar: AvatarRef, platform: Platform) -> str:
    pattern = spec.hook_pattern or DEFAULT_PATTERN
    values = {
        "avatar_name": avatar.name,
        "niche": spec.niche or avatar.niche,
        "platform_tag": PLATFORM_TAGS.get(platform, ""),
        "category": spec.category or avatar.niche,
    }
    try:
        text = pattern.format(**values)
    except (KeyError, IndexError, ValueError):
        text = DEFAULT_PATTERN.format(**values)
    return " ".join(text.split())[: PLATFORM_LIMITS.get(platform, 2200)]


class TemplateHookWriter:
    name = "template"
    stand_in = True

    async def write(
        self, specs: list[PieceSpec], avatar: AvatarRef, platform: Platform
    ) -> HookBatch:
        hooks = {
            spec.piece_id: Hook(
                piece_id=spec.piece_id,
                text=template_hook(spec, avatar, platform),
                source="template",
                stand_in=True,
            )
            for spec in specs
        }
        return HookBatch(hooks=hooks, cost_usd=0.0, calls=0)
