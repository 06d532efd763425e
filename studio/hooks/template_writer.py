"""Template-based hooks: the offline stand-in for the Claude hook writer.

Each template carries a hook pattern; filling it with the avatar and the platform's
tags gives a usable caption at no cost (see `fallback.py`, which the Claude writer
also uses per piece). Pieces without a pattern (custom prompts) get a phrase for their
niche, so neighbouring pieces and platforms differ.
"""

from __future__ import annotations

from studio.hooks.fallback import template_hook, template_hook_text
from studio.types import AvatarRef, HookBatch, PieceSpec, Platform

__all__ = ["TemplateHookWriter", "template_hook_text"]


class TemplateHookWriter:
    name = "template"
    stand_in = True

    async def write(
        self, specs: list[PieceSpec], avatar: AvatarRef, platform: Platform
    ) -> HookBatch:
        hooks = {spec.piece_id: template_hook(spec, avatar, Platform(platform)) for spec in specs}
        return HookBatch(hooks=hooks, cost_usd=0.0, calls=0)
