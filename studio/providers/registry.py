"""Which image providers a batch uses, in which order.

With nothing configured, the offline preview renderer is the only provider.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from studio.providers.base import ImageProvider, ProviderError, ProviderImage
from studio.providers.preview import PreviewRenderer
from studio.types import AvatarRef, PieceSpec


@dataclass
class ChainResult:
    image: ProviderImage
    provider: str
    stand_in: bool
    attempts: int
    seconds: float


class ChainExhausted(Exception):
    def __init__(self, reasons: dict[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {why}" for name, why in reasons.items()))
        self.reasons = reasons


class SequentialChain:
    """Tries each provider once, in order."""

    def __init__(self, providers: list[ImageProvider]) -> None:
        self.providers = providers

    async def generate(self, spec: PieceSpec, avatar: AvatarRef) -> ChainResult:
        reasons: dict[str, str] = {}
        for attempt, provider in enumerate(self.providers, start=1):
            started = time.perf_counter()
            try:
                image = await provider.generate(spec, avatar)
            except ProviderError as exc:
                reasons[provider.name] = str(exc)
                continue
            return ChainResult(
                image, provider.name, provider.stand_in, attempt, time.perf_counter() - started
            )
        raise ChainExhausted(reasons)


_PREVIEW = PreviewRenderer()


def build_image_chain() -> SequentialChain:
    return SequentialChain([_PREVIEW])


def provider_availability() -> dict[str, dict[str, object]]:
    """Which image providers are configured; the preview renderer is always there."""
    return {"preview": {"available": True, "stand_in": True}}
