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


class BilledJob(Protocol):
    """The chain's handle on one provider call that may be billed (the cost ledger behind it).

    Why: money is data. A provider knows the moment it starts to be billed (Replicate:
    the prediction was created; Modal: the request reached the endpoint) and the id the
    provider gave the job; the chain does not. The provider reports both through this
    handle as they happen, so the ledger holds every billed call even when its output is
    lost afterwards, and a retry can fetch that same job instead of buying it again.
    """

    #: a job of this piece at this provider that was billed earlier but whose output was
    #: never received (lost download, process restarted mid-poll); fetch it before
    #: creating a new one. None when there is nothing to recover.
    resume_job_id: str | None

    def created(self, job_id: str | None) -> None:
        """The provider accepted (and bills) a job; `job_id` is its id, when it has one."""
        ...


class NoJobTracking:
    """A `BilledJob` that records nothing: direct calls in tests and tools."""

    resume_job_id: str | None = None

    def created(self, job_id: str | None) -> None:
        return None


@runtime_checkable
class ImageProvider(Protocol):
    #: short name used in logs, rows, prices and the concurrency limit `provider:<name>`
    name: str
    #: True for stand-ins that produce previews rather than real images
    stand_in: bool

    async def generate(
        self, spec: PieceSpec, avatar: AvatarRef, job: BilledJob | None = None
    ) -> ProviderImage:
        """One image. A billed provider calls `job.created(...)` the moment it is billed
        and, when `job.resume_job_id` is set, fetches that job before creating one."""
        ...
