"""The provider chain: one image through ComfyUI -> Modal -> Replicate (configurable).

Per provider it applies the spec's retry policy (tenacity, exponential backoff), a
timeout per attempt and a circuit breaker, and holds a concurrency slot around exactly
the provider call (never around a backoff sleep). With the speed strategy an image
starts on the first provider in the order that has a free slot instead of queueing for
a saturated one; when all are saturated it queues in order like the other strategies.

Every attempt is logged on "studio.providers" as a `provider_attempt` line with piece,
provider, attempt, duration and outcome, so the spec's `grep provider_attempt` works.
Messages pass through `redact` so a secret never reaches a log or an exception.

Money: with a ledger (`studio.ledger.jobs.ImageCallLedger`), every attempt at a provider
with a price opens a ledger job inside its slot, right before the call: the job reserves
the price against the budgets (a refusal skips the provider with the reason `budget`,
and the image goes on to the next provider, a free one if the order has it) and carries
the id of an earlier billed job of this piece whose output was lost, so the provider
fetches it instead of buying again; the provider reports its billing through the job,
and the chain settles it with the attempt's outcome. Free providers write nothing.

A throttled call (ProviderThrottled: the provider's 429 to a job start, nothing billed)
is neither a failure nor an attempt: its slot goes back, it waits the Retry-After and
asks for a slot again in turn, so the calls the fleet's lowered limit no longer admits
wait for it instead of re-sending into a full provider.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from studio.breaker import CircuitBreaker
from studio.ledger.jobs import BudgetRefused, ImageCallLedger, LedgerJob
from studio.providers import pace
from studio.providers.base import (
    BilledJob,
    ImageProvider,
    NoJobTracking,
    ProviderError,
    ProviderImage,
    ProviderThrottled,
    backed_off,
    requeue_throttled,
)
from studio.providers.slots import LocalSlots, SlotBusy, SlotFactory
from studio.types import AvatarRef, PieceSpec

logger = logging.getLogger("studio.providers")

#: new tries of a throttled call (its slot given back each time) before the throttle is
#: the attempt's error, for a provider that does not say (`throttle_retries`)
THROTTLE_RETRIES = 5


@dataclass(frozen=True)
class ProviderPolicy:
    """How one provider is called: attempts (first try included), backoff, timeout."""

    max_attempts: int = 1
    backoff_factor: float = 1.0
    backoff_unit: float = 1.0
    timeout: float = 60.0

    def backoff(self) -> wait_exponential:
        """Wait unit*factor**n before retry n (spec: 1.5 s, 2.25 s, 3.37 s for Modal)."""
        return wait_exponential(
            multiplier=self.backoff_unit * self.backoff_factor, exp_base=self.backoff_factor
        )


@dataclass(frozen=True)
class ChainResult:
    image: ProviderImage
    provider: str
    stand_in: bool
    #: provider calls made for this image, across providers
    attempts: int
    #: wall time of the whole chain for this image, slot waits and backoff included
    seconds: float
    #: wall time of the successful provider call alone
    call_seconds: float
    cost_usd: float
    #: providers that failed before the one that served, with their reasons
    failures: dict[str, str] = field(default_factory=dict)
    #: the serving provider's job id, when it reported one (kept with the piece)
    job_id: str | None = None


class ChainExhausted(Exception):
    """Every provider failed or was skipped for this image; `reasons` says why, per provider."""

    def __init__(self, reasons: Mapping[str, str], attempts: int) -> None:
        self.reasons = dict(reasons)
        self.attempts = attempts
        detail = "; ".join(f"{p}: {r}" for p, r in self.reasons.items()) or "no provider"
        super().__init__(f"all image providers failed ({detail})")

    @property
    def budget(self) -> bool:
        """True when a budget stopped a billed provider: the piece's reason is `budget`."""
        return BUDGET in self.reasons.values()


#: the reason of a provider skipped because its price would pass a budget
BUDGET = "budget"


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class _Skipped(Exception):
    """The provider was not called (breaker open, budget); not a failure of the provider."""


class ProviderChain:
    def __init__(
        self,
        providers: Sequence[ImageProvider],
        policies: Mapping[str, ProviderPolicy] | None = None,
        *,
        speed: bool = False,
        slot: SlotFactory | None = None,
        breakers: Mapping[str, CircuitBreaker] | None = None,
        caps: Mapping[str, int] | None = None,
        secrets: Sequence[str] = (),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        speed_poll_seconds: float = 0.2,
        ledger: ImageCallLedger | None = None,
        prices: Mapping[str, float] | None = None,
    ) -> None:
        self.providers = list(providers)
        #: where billed attempts are written and budgets checked; None: nothing recorded
        self.ledger = ledger
        #: price per image by provider; default: the provider's own `price_usd`
        self.prices = dict(prices or {})
        #: with speed routing, how often to re-check slots freed by other processes
        self.speed_poll_seconds = speed_poll_seconds
        self.policies = dict(policies or {})
        self.speed = speed
        self.slot: SlotFactory = slot or LocalSlots(caps or {})
        self.breakers = dict(breakers or {})
        for provider in self.providers:
            self.breakers.setdefault(provider.name, CircuitBreaker())
        self._secrets = [s for s in secrets if s]
        self._sleep = sleep

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.providers]

    def with_slot(self, slot: SlotFactory) -> ProviderChain:
        """The same providers, policies and breakers with another slot factory."""
        clone = ProviderChain(
            self.providers, self.policies, speed=self.speed, slot=slot,
            breakers=self.breakers, secrets=self._secrets, sleep=self._sleep,
            speed_poll_seconds=self.speed_poll_seconds, ledger=self.ledger, prices=self.prices,
        )
        return clone

    def with_ledger(self, ledger: ImageCallLedger | None) -> ProviderChain:
        """The same chain (breakers shared) writing its billed attempts to `ledger`."""
        clone = self.with_slot(self.slot)
        clone.ledger = ledger
        return clone

    def price(self, provider: ImageProvider) -> float:
        if provider.name in self.prices:
            return float(self.prices[provider.name])
        return float(getattr(provider, "price_usd", 0.0) or 0.0)

    def policy(self, name: str) -> ProviderPolicy:
        return self.policies.get(name, ProviderPolicy())

    async def generate(self, spec: PieceSpec, avatar: AvatarRef) -> ChainResult:
        started = time.perf_counter()
        reasons: dict[str, str] = {}
        counter = _Counter()
        remaining = list(self.providers)
        if self.speed:
            return await self._generate_fastest(spec, avatar, counter, started, reasons)
        for provider in remaining:
            try:
                result = await self._run(provider, spec, avatar, counter, first_wait=True)
            except (ProviderError, _Skipped) as exc:
                reasons[provider.name] = self._reason(exc)
                continue
            return self._done(result, provider, counter, started, reasons)
        raise ChainExhausted(reasons, counter.calls)

    async def _generate_fastest(
        self,
        spec: PieceSpec,
        avatar: AvatarRef,
        counter: _Counter,
        started: float,
        reasons: dict[str, str],
    ) -> ChainResult:
        """Speed routing: the first provider in the order with a free slot serves.

        When every remaining provider is saturated the image waits for whichever frees
        a slot first rather than queueing for one of them; after a failure it scans the
        order again from the top.
        """
        remaining = list(self.providers)
        while remaining:
            for provider in list(remaining):
                if not self.breakers[provider.name].would_allow():
                    self._log(spec, provider.name, 1, 0.0, "skipped", "circuit open")
                    reasons[provider.name] = "circuit open"
                    remaining.remove(provider)
                    continue
                may_be_free = getattr(self.slot, "may_be_free", None)
                if may_be_free is not None and not may_be_free(provider.name):
                    continue  # saturated: skip the attempt machinery (CPU at a batch's start)
                try:
                    result = await self._run(provider, spec, avatar, counter, first_wait=False)
                except SlotBusy:
                    continue
                except (ProviderError, _Skipped) as exc:
                    reasons[provider.name] = self._reason(exc)
                    remaining.remove(provider)
                    break
                return self._done(result, provider, counter, started, reasons)
            else:
                if remaining:
                    await self._wait_for_release()
        raise ChainExhausted(reasons, counter.calls)

    async def _wait_for_release(self) -> None:
        wait = getattr(self.slot, "wait_for_release", None)
        if wait is None:
            await self._sleep(0.05)
        else:
            await wait(self.speed_poll_seconds)

    def _reason(self, exc: BaseException) -> str:
        message = str(exc)
        if isinstance(exc, ProviderError):
            prefix = f"{exc.provider}: "
            message = message.removeprefix(prefix)
        return redact(message, self._secrets)

    def _done(
        self,
        result: tuple[ProviderImage, float, str | None],
        provider: ImageProvider,
        counter: _Counter,
        started: float,
        reasons: dict[str, str],
    ) -> ChainResult:
        image, call_seconds, job_id = result
        return ChainResult(
            image=image,
            provider=provider.name,
            stand_in=bool(getattr(provider, "stand_in", False)),
            attempts=counter.calls,
            seconds=time.perf_counter() - started,
            call_seconds=call_seconds,
            cost_usd=image.cost_usd,
            failures=reasons,
            job_id=job_id,
        )

    async def _run(
        self,
        provider: ImageProvider,
        spec: PieceSpec,
        avatar: AvatarRef,
        counter: _Counter,
        *,
        first_wait: bool,
    ) -> tuple[ProviderImage, float, str | None]:
        """All attempts on one provider: tenacity retries retryable errors with backoff."""
        policy = self.policy(provider.name)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(policy.max_attempts),
            wait=policy.backoff(),
            retry=retry_if_exception(lambda e: isinstance(e, ProviderError) and e.retryable),
            sleep=self._sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                number = attempt.retry_state.attempt_number
                wait = first_wait or number > 1
                return await self._in_turn(provider, policy, spec, avatar, number, counter, wait)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _in_turn(
        self,
        provider: ImageProvider,
        policy: ProviderPolicy,
        spec: PieceSpec,
        avatar: AvatarRef,
        number: int,
        counter: _Counter,
        wait: bool,
    ) -> tuple[ProviderImage, float, str | None]:
        """One attempt, asked again while the provider throttles it: each time with its
        slot given back, after the Retry-After (backed off on repeats), then a slot again
        in turn. After the provider's `throttle_retries` the throttle is the attempt's
        error (tenacity's backoff, then the next provider)."""
        throttles = 0
        while True:
            try:
                return await self._attempt(provider, policy, spec, avatar, number, counter, wait)
            except ProviderThrottled as exc:
                throttles += 1
                if throttles > getattr(provider, "throttle_retries", THROTTLE_RETRIES):
                    raise
                await self._sleep(backed_off(exc.retry_after, throttles))

    async def _attempt(
        self,
        provider: ImageProvider,
        policy: ProviderPolicy,
        spec: PieceSpec,
        avatar: AvatarRef,
        number: int,
        counter: _Counter,
        wait: bool,
    ) -> tuple[ProviderImage, float, str | None]:
        breaker = self.breakers[provider.name]
        if not breaker.would_allow():  # do not queue for a slot of a provider we would skip
            self._log(spec, provider.name, number, 0.0, "skipped", "circuit open")
            raise _Skipped("circuit open")
        if wait:  # a scan for a free slot (speed routing) is not held up here
            await pace.before_slot(provider.name)
        async with self.slot(provider.name, wait=wait):
            if not breaker.allow():
                self._log(spec, provider.name, number, 0.0, "skipped", "circuit open")
                raise _Skipped("circuit open")
            job = await self._open_job(spec, avatar, provider, number, breaker)
            handle: BilledJob = job if job is not None else _JobIdOnly()
            counter.calls += 1
            started = time.perf_counter()
            requeue = requeue_throttled.set(True)  # a throttle gives this slot back
            let_in = pace.admitted()  # its answers tell the fleet the limit it ran under
            try:
                async with asyncio.timeout(policy.timeout):
                    image = await provider.generate(spec, avatar, job=handle)
            except TimeoutError:
                elapsed = time.perf_counter() - started
                breaker.record_failure()
                await _settle(job, "timeout", delivered=False)
                self._log(spec, provider.name, number, elapsed, "timeout", f"{policy.timeout:g}s")
                raise ProviderError(provider.name, f"timed out after {policy.timeout:g}s") from None
            except ProviderThrottled as exc:  # the provider's pace, not its failure
                elapsed = time.perf_counter() - started
                breaker.release_trial()
                await _settle(job, "throttled", delivered=False)
                self._log(spec, provider.name, number, elapsed, "throttled", self._reason(exc))
                await pace.taken_in(provider.name)  # the slot's next holder: lowered limit
                raise
            except ProviderError as exc:
                elapsed = time.perf_counter() - started
                breaker.record_failure()
                await _settle(job, "failed", delivered=False)
                self._log(spec, provider.name, number, elapsed, "error", self._reason(exc))
                raise
            except asyncio.CancelledError:
                breaker.release_trial()
                if job is not None:  # the run is going away: write the row before it does
                    await asyncio.shield(_settle(job, "cancelled", delivered=False))
                raise
            except Exception as exc:  # a bug or an unexpected client error: contain it
                elapsed = time.perf_counter() - started
                breaker.record_failure()
                await _settle(job, "failed", delivered=False)
                reason = f"unexpected {type(exc).__name__}"
                self._log(spec, provider.name, number, elapsed, "error", reason)
                raise ProviderError(provider.name, reason) from None
            finally:
                requeue_throttled.reset(requeue)
                pace.admitted_reset(let_in)
            await _settle(job, "ok", delivered=True)
        elapsed = time.perf_counter() - started
        breaker.record_success()
        self._log(spec, provider.name, number, elapsed, "ok", None)
        return image, elapsed, handle.job_id if hasattr(handle, "job_id") else None

    async def _open_job(
        self,
        spec: PieceSpec,
        avatar: AvatarRef,
        provider: ImageProvider,
        number: int,
        breaker: CircuitBreaker,
    ) -> LedgerJob | None:
        """The attempt's ledger job (reserved), None for a free provider or no ledger."""
        price = self.price(provider)
        if self.ledger is None or price <= 0:
            return None
        try:
            return await self.ledger.open(
                batch_id=spec.batch_id, avatar_id=avatar.id, piece_id=spec.piece_id,
                provider=provider.name, price_usd=price,
            )
        except BudgetRefused:
            breaker.release_trial()  # not a call: a half-open breaker keeps its trial
            self._log(spec, provider.name, number, 0.0, "skipped", BUDGET)
            raise _Skipped(BUDGET) from None

    def _log(
        self,
        spec: PieceSpec,
        provider: str,
        attempt: int,
        seconds: float,
        outcome: str,
        reason: str | None,
    ) -> None:
        line = (
            f"provider_attempt piece={spec.piece_id} provider={provider} attempt={attempt} "
            f"duration={seconds:.3f}s outcome={outcome}"
        )
        if reason:
            line += f' reason="{redact(reason, self._secrets)}"'
        level = logging.INFO if outcome == "ok" else logging.WARNING
        logger.log(level, line)


class _JobIdOnly(NoJobTracking):
    """A free call's handle: nothing to bill, but the job id is kept with the result."""

    def __init__(self) -> None:
        self.job_id: str | None = None

    def created(self, job_id: str | None) -> None:
        self.job_id = job_id


async def _settle(job: LedgerJob | None, outcome: str, *, delivered: bool) -> None:
    if job is not None:
        await job.settle(outcome, delivered=delivered)


class _Counter:
    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls = 0
