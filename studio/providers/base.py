"""The seam every image provider implements.

A provider knows how to turn one planned piece into image bytes and what that cost;
it knows nothing of retries across providers, concurrency caps or staging, which the
chain and the Prefect task add around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from studio.types import AvatarRef, PieceSpec


@dataclass(frozen=True)
class ProviderImage:
    data: bytes
    content_type: str
    cost_usd: float


class ProviderError(Exception):
    """A provider failed to make an image. `retryable` says whether trying again can help."""

    def __init__(self, provider: str, message: str, *, retryable: bool = True) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.retryable = retryable


@runtime_checkable
class ImageProvider(Protocol):
    #: short name used in logs, rows, prices and the concurrency limit `provider:<name>`
    name: str
    #: True for stand-ins that produce previews rather than real images
    stand_in: bool

    async def generate(self, spec: PieceSpec, avatar: AvatarRef) -> ProviderImage: ...
