"""Keep every process of the fleet to a provider's request rate (`rate:<provider>`).

Why: a provider that counts requests per second or per minute (REPLICATE_RPS,
ANTHROPIC_RPM) throttles the account, not the process; N processes pacing themselves
send N times the rate. Prefect's rate limit (a global concurrency limit whose slots
decay at `slot_decay_per_second`, made by deployments/rate_limits.py) is shared by all
of them: before each job-starting request a provider client awaits
`studio.providers.pace.before_call`, and the listener registered here takes one slot of
`rate:<provider>` with `prefect.concurrency.asyncio.rate_limit`.

A studio without rate limits must pay nothing per call: whether `rate:<provider>` exists
(and is active) is read once per process and remembered for `CHECK_SECONDS`, so a call
then costs a dictionary look-up. A missing limit never blocks (Prefect's `strict=False`);
a Prefect API that cannot be read is taken as "no rate limit" for a short while (the
provider call goes on; the in-flight limit still holds it), logged once.

How Prefect's rate limit paces (measured, Prefect 3.9.1, SQLite server, issue 20): it
never lets the fleet above the rate (any window of T seconds: at most `limit` +
rate x T takes), and the 423's Retry-After it sleeps is one slot's decay with jitter
(0.39-0.64 s at 2/s, 1.6-2.6 s at 0.5/s, four processes waiting: not longer than the
decay needs), so no workaround of its waiting lives here. It under-delivers instead:
the server decays whole slots counted from the last successful take (the fraction
since the slot came free is lost at each take) and a waiter only notices at its next
poll, so two or four processes with a standing queue got 1.56-1.65/s of 2/s on 2
lightly shared cores, 0.93-1.16/s of 2/s and 0.41/s of 0.5/s with a load of 10-15 on
the same 2 cores (each API round trip then up to 0.9 s). Which process gets the next
slot is whichever polls first (no queue across processes).
"""

from __future__ import annotations

import logging
import time

from prefect.client.orchestration import get_client
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, rate_limit
from prefect.exceptions import ObjectNotFound

from studio.providers import pace
from studio.providers.rate_settings import rate_limit_name

logger = logging.getLogger("studio.providers")

#: how long a process trusts what it read about a rate limit's existence: a limit
#: `studio limits apply` creates or deletes takes effect within this long
CHECK_SECONDS = 30.0
#: after a failed read of the Prefect API, how long before asking again
RETRY_CHECK_SECONDS = 5.0


class RateListener:
    """A PaceListener whose `before_call` waits for a slot of the provider's rate limit."""

    def __init__(self, check_seconds: float = CHECK_SECONDS) -> None:
        self.check_seconds = check_seconds
        #: provider -> (limit in force, monotonic time until which that is trusted)
        self._known: dict[str, tuple[bool, float]] = {}
        self._warned: set[str] = set()

    def forget(self, provider: str | None = None) -> None:
        """Read the limit's existence again at the next call (all providers: None)."""
        if provider is None:
            self._known.clear()
        else:
            self._known.pop(provider, None)

    async def in_force(self, provider: str) -> bool:
        """Whether `rate:<provider>` exists and is active (remembered for a while)."""
        known = self._known.get(provider)
        now = time.monotonic()
        if known is not None and now < known[1]:
            return known[0]
        name = rate_limit_name(provider)
        try:
            async with get_client() as client:
                limit = await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            found, trust = False, self.check_seconds
        except Exception as exc:  # the API is away: never hold a provider call on it
            if provider not in self._warned:
                self._warned.add(provider)
                logger.warning(
                    "provider_rate_unknown provider=%s limit=%s error=%s: calls go on "
                    "unpaced until the Prefect API answers",
                    provider, name, type(exc).__name__,
                )
            found, trust = False, RETRY_CHECK_SECONDS
        else:
            # Prefect's rate_limit refuses a limit without decay or below one slot (422);
            # an inactive one it skips: none of them paces anything
            found = (
                bool(limit.active)
                and (limit.slot_decay_per_second or 0.0) > 0
                and limit.limit >= 1
            )
            trust = self.check_seconds
            self._warned.discard(provider)
        self._known[provider] = (found, now + trust)
        return found

    async def before_call(self, provider: str) -> None:
        if not await self.in_force(provider):
            return
        try:
            await rate_limit(rate_limit_name(provider), occupy=1, strict=False)
        except ConcurrencySlotAcquisitionError as exc:
            # changed under us (made a plain limit, set to 0) or the API went away: the
            # provider call goes on, as with no rate limit; read it again next time
            self.forget(provider)
            logger.warning(
                "provider_rate_skipped provider=%s limit=%s error=%s",
                provider, rate_limit_name(provider), " ".join(str(exc).split())[:200],
            )

    def throttled(self, provider: str, status: int, retry_after: float | None,
                  sent_at: float | None = None) -> None:
        """The in-flight limit and Retry-After are engine/provider_pace.py's concern."""

    async def taken_in(self, provider: str) -> None:
        """Throttles change nothing here (a rate is what the operator configured)."""

    def succeeded(self, provider: str, sent_at: float | None = None) -> None:
        """Nothing to learn here: a rate is what the operator configured."""


_listener: RateListener | None = None


def listener() -> RateListener:
    """This process's rate listener (made on first use)."""
    global _listener
    if _listener is None:
        _listener = RateListener()
    return _listener


def install() -> None:
    """Register this process's rate listener with studio.providers.pace (idempotent)."""
    pace.register(listener())


def uninstall() -> None:
    """Take the listener out (tests; a process that stops pacing)."""
    global _listener
    if _listener is not None:
        pace.unregister(_listener)
        _listener = None
