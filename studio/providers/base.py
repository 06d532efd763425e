"""The seam every image provider implements.

A provider knows how to turn one planned piece into image bytes and what that cost;
it knows nothing of retries across providers, concurrency caps or staging, which the
chain and the Prefect task add around it.
"""

from __future__ import annotations

from contextvars import ContextVar
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


#: the most a repeated throttle's wait is multiplied (1 s Retry-After: 1, 2, 4, 8, 8 s)
BACKOFF_CAP = 8

#: set by the chain around a provider call that holds a fleet slot: a job-starting
#: request the provider throttles then raises ProviderThrottled (the chain gives the slot
#: back and asks again in turn) instead of being re-sent by the client while it holds it
requeue_throttled: ContextVar[bool] = ContextVar("requeue_throttled", default=False)


def backed_off(retry_after: float, retries: int) -> float:
    """The wait before the `retries`-th new try of a throttled job start: the Retry-After,
    doubled for each earlier refusal of the same start (at most `BACKOFF_CAP` times).

    Why: when the provider's capacity falls below the calls in flight (issue 20's bench:
    20 -> 8), each excess start asked again every Retry-After was a 429 per second until
    running jobs ended. Backing off leaves the first new try at the provider's word and
    spaces the rest."""
    return retry_after * min(BACKOFF_CAP, 2 ** max(0, retries - 1))


class ProviderThrottled(ProviderError):
    """The provider would not start the job now (429) and bills nothing for it.

    Why a class of its own: a throttle is the provider's pace, not its failure, so the
    chain counts no circuit-breaker failure and no attempt for it; and it gives the
    call's fleet slot back before asking again, so the call waits in turn under the
    limit the fleet lowered (engine/provider_pace.py) instead of re-sending above it
    (issue 20's bench: 18 of the 31 refusals after a drop from 20 to 8 were such
    re-sends, fired together when the fleet's Retry-After passed)."""

    def __init__(self, provider: str, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(provider, message, retryable=True)
        self.retry_after = retry_after


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
