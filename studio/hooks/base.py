"""The seam hook writers implement: one call covers a group of pieces."""

from __future__ import annotations

from typing import Protocol

from studio.types import AvatarRef, HookBatch, PieceSpec, Platform


class HookWriter(Protocol):
    name: str
    stand_in: bool

    async def write(
        self, specs: list[PieceSpec], avatar: AvatarRef, platform: Platform
    ) -> HookBatch: ...
