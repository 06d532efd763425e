"""The fleet at its providers' pace: AIMD on Prefect's `provider:<name>` limits and a
fleet-wide Retry-After (issue 20, parts 2 and 5).

Why here: provider clients report each throttling answer and accepted job to
studio.providers.pace, which knows no Prefect. This listener turns them into one
decision per provider for the whole fleet (studio/providers/aimd.py, taken with the
provider's `provider_pace` row locked, studio/db/provider_pace.py) and puts the result
on Prefect's global concurrency limit, the limit every process's slots are leased from
(engine/provider_slots.py) and the one an operator sees on Prefect's Concurrency page.

- `throttled()` never blocks the answer's caller: it notes the Retry-After for this
  process at once (its next `before_call` waits) and queues the adjustment for one
  background thread per process, which reads and updates the row and Prefect's limit,
  logs `Provider throttled | Provider: replicate | Limit: 5 -> 3 | Retry-After: 10s`
  and emits `studio.provider.throttled`.
- `taken_in()` returns once this process's last throttle of a provider is in the row (at
  most `TAKEN_IN_SECONDS`): the chain holds a refused call's slot until then, so the slot
  goes to its next holder under the lowered limit.
- `before_call()` waits until the provider's fleet-wide `throttled_until` has passed:
  read from the database at most every `FLEET_CACHE_SECONDS` per provider (a busy batch
  does not query per call), a throttle this process saw applies at once.
- `succeeded()` asks the row at most every `SUCCESS_DEBOUNCE_SECONDS` per provider; the
  decision raises the limit by 1 after the quiet window, never above
  min(ceiling, an operator's cap): `Provider recovered | Provider: replicate | Limit: 3 -> 4`,
  `studio.provider.recovered`.
- A provider without a `provider:<name>` limit (Anthropic) gets the fleet-wide
  Retry-After only; `PROVIDER_LIMITS_ADAPTIVE=false` never changes a limit.

A manual cap: an operator who sets the limit by hand on Prefect's Concurrency page (or
`prefect gcl update`) is seen at the next adjustment (Prefect's limit differs from the
one AIMD put there): it is recorded as a "manual" change and no raise goes above it
until `studio limits apply` puts the configured ceiling back.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import queue
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from studio.db import provider_pace as db
from studio.db.engine import session_scope
from studio.providers import aimd
from studio.providers import pace as pace_hub
from studio.providers.build import caps
from studio.providers.entry import limit_name
from studio.providers.pace_settings import PaceSettings
from studio.providers.settings import ProviderSettings

logger = logging.getLogger("studio.providers")

#: how long a fleet-wide Retry-After read from the database is trusted by `before_call`
FLEET_CACHE_SECONDS = 0.5
#: at most one accepted-job check of the row per provider per this many seconds
SUCCESS_DEBOUNCE_SECONDS = 0.5
#: how long a process at exit waits for its queued adjustments
FLUSH_SECONDS = 5.0
#: the longest a throttled call keeps its slot waiting for its throttle to be taken in
TAKEN_IN_SECONDS = 2.0
#: the longest one sleep of `before_call` before it reads the fleet's Retry-After again
MAX_SLEEP_SECONDS = 1.0
#: each Prefect call of an adjustment gives up after this: the two calls of a change
#: (read, update) end well within db.PENDING_STALE_SECONDS, so a slow live change is
#: never settled as a dead one's
API_TIMEOUT_SECONDS = 10.0
#: how often an adjustment reads Prefect's limit even when it changes nothing (so an
#: operator's cap shows in the row soon); a change always reads it first
OBSERVE_SECONDS = 5.0


def _shown(limit: int | None) -> str:
    return "none" if limit is None else str(limit)


def throttled_line(provider: str, from_limit: int | None, to_limit: int | None,
                   retry_after: float | None) -> str:
    wait = "none" if retry_after is None else f"{retry_after:g}s"
    return (
        f"Provider throttled | Provider: {provider} | Limit: {_shown(from_limit)} -> "
        f"{_shown(to_limit)} | Retry-After: {wait}"
    )


def recovered_line(provider: str, from_limit: int, to_limit: int) -> str:
    return f"Provider recovered | Provider: {provider} | Limit: {from_limit} -> {to_limit}"


@dataclass(frozen=True)
class _Job:
    provider: str
    event: aimd.Event
    context: contextvars.Context
    #: set once the job's adjustment is done (a throttle's: `taken_in` waits for it)
    done: threading.Event | None = None


class PrefectLimit:
    """`provider:<name>` on the Prefect API of the context the job was queued in.

    A limit that does not exist, an API that cannot be reached, or a provider that has
    no such limit (not an image provider) reads as None: no limit to adjust, only the
    Retry-After is shared."""

    def __init__(self, keeper: PaceKeeper, provider: str) -> None:
        self.keeper, self.provider = keeper, provider
        self._active: int | None = None

    def read(self) -> int | None:
        if self.provider not in self.keeper.ceilings:
            return None
        from prefect.exceptions import ObjectNotFound

        try:
            client = self.keeper._client()
            if client is None:
                return None
            found = client.read_global_concurrency_limit_by_name(limit_name(self.provider))
        except ObjectNotFound:
            return None
        except Exception as exc:  # the pace is best effort: Retry-After still shared
            self.keeper._warn_once(
                f"read:{self.provider}",
                "Could not read %s (%s): its limit is not adjusted this time",
                limit_name(self.provider), type(exc).__name__,
            )
            return None
        self._active = int(found.active_slots)
        return int(found.limit)

    def in_flight(self) -> int | None:
        """The slots held fleet-wide at the last read: the calls in flight (every call to
        the provider holds one, engine/provider_slots.py)."""
        return self._active

    def write(self, limit: int) -> None:
        from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

        client = self.keeper._client()
        assert client is not None  # read() found the limit through it
        client.update_global_concurrency_limit(
            limit_name(self.provider), GlobalConcurrencyLimitUpdate(limit=limit)
        )


class PaceKeeper:
    """The PaceListener of this process (see the module's docstring)."""

    def __init__(
        self,
        settings: PaceSettings | None = None,
        ceilings: Mapping[str, int] | None = None,
        *,
        sessions: db.Sessions = session_scope,
        observe_seconds: float = OBSERVE_SECONDS,
    ) -> None:
        self.settings = settings or PaceSettings()
        self.knobs = aimd.Knobs.from_settings(self.settings)
        self.ceilings = dict(ceilings if ceilings is not None else caps(ProviderSettings()))
        self.sessions = sessions
        self.observe_seconds = observe_seconds
        self._observed: dict[str, float] = {}
        #: epoch seconds until which this process saw a provider throttle
        self._local_until: dict[str, float] = {}
        #: provider -> (monotonic time read, epoch seconds of the fleet's throttled_until)
        self._fleet: dict[str, tuple[float, float]] = {}
        #: provider -> the fleet's limit in force as last read or set (slot pools ask)
        self._limits: dict[str, int] = {}
        self._refreshing: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, asyncio.Future[float]]
        ] = weakref.WeakKeyDictionary()
        self._success_asked: dict[str, float] = {}
        self._throttle_seen: dict[str, float] = {}  # monotonic time of this process's last
        #: provider -> done when this process's latest throttle is in the fleet's row
        self._throttle_done: dict[str, threading.Event] = {}
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self._warned: set[str] = set()
        #: what this process's adjustments did, oldest first (tests, the bench)
        self.outcomes: list[db.Outcome] = []

    # --- PaceListener ------------------------------------------------------------------

    def throttled(self, provider: str, status: int, retry_after: float | None,
                  sent_at: float | None = None) -> None:
        self._throttle_seen[provider] = time.monotonic()
        if retry_after is not None and retry_after > 0:
            until = time.time() + retry_after
            if until > self._local_until.get(provider, 0.0):
                self._local_until[provider] = until
        sent = datetime.fromtimestamp(sent_at, UTC) if sent_at is not None else None
        done = self._throttle_done[provider] = threading.Event()
        self._submit(provider, aimd.Throttled(status, retry_after, sent, datetime.now(UTC)),
                     done)

    def succeeded(self, provider: str, sent_at: float | None = None) -> None:
        now = time.monotonic()
        if now - self._success_asked.get(provider, -1e9) < SUCCESS_DEBOUNCE_SECONDS:
            return
        # a throttle this process saw within the quiet window says the window is not
        # quiet, whether or not its adjustment (queued behind slower ones) is in the
        # fleet's row yet: a success asked now could raise a limit that is throttling
        if now - self._throttle_seen.get(provider, -1e9) < self.knobs.raise_after_seconds:
            return
        self._success_asked[provider] = now
        sent = datetime.fromtimestamp(sent_at, UTC) if sent_at is not None else None
        self._submit(provider, aimd.Succeeded(sent))

    async def taken_in(self, provider: str) -> None:
        done = self._throttle_done.get(provider)
        deadline = time.monotonic() + TAKEN_IN_SECONDS
        while done is not None and not done.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def before_call(self, provider: str) -> None:
        while True:
            until = max(self._local_until.get(provider, 0.0), await self._fleet_until(provider))
            wait = until - time.time()
            if wait <= 0:
                return
            await asyncio.sleep(min(wait, MAX_SLEEP_SECONDS))

    # --- the fleet's Retry-After ---------------------------------------------------------

    async def _fleet_until(self, provider: str) -> float:
        cached = self._fleet.get(provider)
        if cached is not None and time.monotonic() - cached[0] < FLEET_CACHE_SECONDS:
            return cached[1]
        loop = asyncio.get_running_loop()
        pending = self._refreshing.setdefault(loop, {})
        if provider in pending:  # one read per provider at a time; the others share it
            return await asyncio.shield(pending[provider])
        future: asyncio.Future[float] = loop.create_future()
        pending[provider] = future
        try:
            until = await asyncio.to_thread(self._read_fleet_until, provider)
            future.set_result(until)
            return until
        finally:
            pending.pop(provider, None)
            if not future.done():
                future.set_result(0.0)

    def _read_fleet_until(self, provider: str) -> float:
        asked = time.monotonic()
        try:
            with self.sessions() as session:
                until, current = db.fleet_view(session, provider)
            if current is not None:
                self._limits[provider] = current
            else:  # no record (a fresh database): nothing lowered that this process knows
                self._limits.pop(provider, None)
        except Exception as exc:  # never hold calls back on a database that is away
            self._warn_once(
                f"fleet:{provider}",
                "Could not read the fleet's Retry-After for %s (%s); honouring this "
                "process's only", provider, type(exc).__name__,
            )
            until = None
        value = until.timestamp() if until is not None else 0.0
        self._note_fleet(provider, value, asked)
        return value

    def _note_fleet(self, provider: str, until: float, asked: float) -> None:
        cached = self._fleet.get(provider)
        if cached is None or cached[0] <= asked:
            self._fleet[provider] = (asked, until)

    # --- the adjustments (one background thread per process) ------------------------------

    def _submit(
        self, provider: str, event: aimd.Event, done: threading.Event | None = None
    ) -> None:
        self._queue.put(_Job(provider, event, contextvars.copy_context(), done))
        if self._thread is None or not self._thread.is_alive():
            with self._start_lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._work, name="provider-pace", daemon=True
                    )
                    self._thread.start()

    def _work(self) -> None:
        while True:
            jobs = [self._queue.get()]
            while True:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                for job in _coalesced(jobs):
                    job.context.run(self._adjust, job)
            finally:
                for job in jobs:
                    if job.done is not None:
                        job.done.set()
                    self._queue.task_done()

    def _adjust(self, job: _Job) -> None:
        from prefect.context import SyncClientContext

        SyncClientContext.__var__.set(None)  # this job's context copy only: our own client
        asked = time.monotonic()
        observe = asked - self._observed.get(job.provider, -1e9) >= self.observe_seconds
        try:
            outcome = db.adjust(
                job.provider, self.ceilings.get(job.provider), job.event, self.knobs,
                PrefectLimit(self, job.provider), sessions=self.sessions, observe=observe,
            )
        except Exception as exc:
            logger.warning(
                "Could not adjust the pace of %s (%s: %s)",
                job.provider, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "",
            )
            return
        if observe:
            self._observed[job.provider] = asked
        until = outcome.throttled_until.timestamp() if outcome.throttled_until else 0.0
        self._note_fleet(job.provider, until, asked)
        if outcome.current is not None:
            self._limits[job.provider] = outcome.current
        self.outcomes.append(outcome)
        self._tell(job, outcome)

    def _tell(self, job: _Job, outcome: db.Outcome) -> None:
        """The log lines and Prefect events of one adjustment."""
        for noted in outcome.noted:
            if noted.reason == "manual":
                logger.warning(
                    "Provider limit set by hand | Provider: %s | Limit: %s -> %s | kept as "
                    "its cap until `studio limits apply`",
                    noted.provider, noted.from_limit, noted.to_limit,
                )
            else:
                logger.info(
                    "Provider limit change completed | Provider: %s | Limit: %s -> %s",
                    noted.provider, noted.from_limit, noted.to_limit,
                )
        change = outcome.change
        if isinstance(job.event, aimd.Throttled) and outcome.new_event:
            retry_after = job.event.retry_after
            if change is not None:
                from_limit, to_limit = change.from_limit, change.to_limit
            else:
                from_limit = to_limit = outcome.current
            logger.warning(throttled_line(job.provider, from_limit, to_limit, retry_after))
            self._emit("studio.provider.throttled", job.provider, from_limit, to_limit,
                       outcome.ceiling, retry_after, job.event.status)
        elif change is not None and change.reason == "recovered":
            logger.info(recovered_line(job.provider, change.from_limit, change.to_limit))
            self._emit("studio.provider.recovered", job.provider, change.from_limit,
                       change.to_limit, outcome.ceiling, None, None)

    def _emit(self, event: str, provider: str, from_limit: int | None, to_limit: int | None,
              ceiling: int | None, retry_after: float | None, status: int | None) -> None:
        try:
            from prefect.events import emit_event

            emit_event(
                event=event,
                resource={
                    "prefect.resource.id": f"studio.provider.{provider}",
                    "prefect.resource.name": provider,
                },
                payload={
                    "from_limit": from_limit, "to_limit": to_limit, "ceiling": ceiling,
                    "retry_after": retry_after, "status": status,
                },
            )
        except RuntimeError as exc:  # at interpreter exit Prefect cannot start its worker
            if "after shutdown" not in str(exc):
                raise
            logger.info("Not emitted at exit: %s for %s", event, provider)
        except Exception as exc:  # an event lost is a line in the log, never a failed call
            self._warn_once(f"emit:{event}", "Could not emit %s (%s)", event,
                            type(exc).__name__)

    def _client(self) -> Any:
        """A sync Prefect client of this thread for the job's API URL (None without one:
        a background thread must not start a temporary server)."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL

        url = PREFECT_API_URL.value()
        if not url:
            return None
        client = self._clients.get(url)
        if client is None:
            client = get_client(
                httpx_settings={"timeout": API_TIMEOUT_SECONDS}, sync_client=True
            )
            client.__enter__()
            self._clients[url] = client
        return client

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    def flush(self, timeout: float = FLUSH_SECONDS) -> bool:
        """Wait until the queued adjustments are done; False when `timeout` passed first."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def limit_in_force(self, provider: str) -> int | None:
        """The fleet's limit of `provider` as this process last saw it (no I/O: refreshed
        by `before_call`'s reads and this process's own adjustments); None when unknown.

        Why the slot pool asks: a lowered Prefect limit only binds a lease taken from the
        server; a pool that hands its released leases straight to its own waiters would
        keep the old number in flight for as long as it has waiters."""
        return self._limits.get(provider)

    def fleet_until(self, provider: str) -> datetime | None:
        """The Retry-After this process honours for `provider` now (tests, the bench)."""
        until = max(self._local_until.get(provider, 0.0),
                    self._fleet.get(provider, (0.0, 0.0))[1])
        return datetime.fromtimestamp(until, UTC) if until else None


_keeper: PaceKeeper | None = None
_lock = threading.Lock()


def keeper() -> PaceKeeper | None:
    return _keeper


def limit_in_force(provider: str) -> int | None:
    """The installed keeper's view of `provider`'s fleet limit (None: no keeper, unknown)."""
    return _keeper.limit_in_force(provider) if _keeper is not None else None


def install() -> None:
    """Register this process's pace keeper (idempotent); called at every batch start."""
    global _keeper
    with _lock:
        if _keeper is not None:
            return
        _keeper = PaceKeeper()
        pace_hub.register(_keeper)
        atexit.register(_flush_at_exit)


def uninstall() -> None:
    """Unregister the keeper (tests), after its queued adjustments are done."""
    global _keeper
    with _lock:
        if _keeper is None:
            return
        _keeper.flush()
        pace_hub.unregister(_keeper)
        _keeper = None


async def settle(timeout: float = FLUSH_SECONDS) -> None:
    """Wait (off the event loop) until this process's queued adjustments are done.

    Why a batch calls it before it ends: the adjustments run on a background thread, so
    under load one may still be queued when the flow returns; its log line would then be
    written after Prefect drained the run's log worker (lost from the run's logs) and its
    change would miss the batch's artifact. The exit hook below is only the last resort."""
    if _keeper is not None and _keeper._queue.unfinished_tasks:
        await asyncio.to_thread(_keeper.flush, timeout)


def _flush_at_exit() -> None:
    if _keeper is not None:
        _keeper.flush()


def _coalesced(jobs: list[_Job]) -> list[_Job]:
    """A backlog of one provider's answers, one job per provider and kind: the throttling
    answers waiting together are one throttling event (the Retry-After that ends last
    kept, and the latest send time: one call sent after the last decrease makes it a new
    event), the successes one check (the latest send time: one call let in under the limit in
    force is enough for a raise)."""
    merged: dict[tuple[str, str], _Job] = {}
    for job in jobs:
        key = (job.provider, type(job.event).__name__)
        seen = merged.get(key)
        if seen is None:
            merged[key] = job
        elif isinstance(job.event, aimd.Throttled) and isinstance(seen.event, aimd.Throttled):
            sent = [s for s in (seen.event.sent_at, job.event.sent_at) if s is not None]
            pause = max(seen.event, job.event, key=_pause_end)
            merged[key] = _Job(
                job.provider,
                replace(pause, status=seen.event.status, sent_at=max(sent) if sent else None),
                seen.context,
            )
        elif isinstance(job.event, aimd.Succeeded) and isinstance(seen.event, aimd.Succeeded):
            times = (seen.event.sent_at, job.event.sent_at)  # None: not known, counts
            latest = None if None in times else max(t for t in times if t is not None)
            merged[key] = _Job(job.provider, aimd.Succeeded(latest), seen.context)
    # throttling first: a success in the same backlog must not raise before it is seen
    return sorted(merged.values(), key=lambda j: not isinstance(j.event, aimd.Throttled))


def _pause_end(event: aimd.Throttled) -> tuple[float, float]:
    """When `event`'s Retry-After ends (an answer without one: never), for the backlog's
    longest pause."""
    if event.retry_after is None:
        return (0.0, 0.0)
    answered = event.answered_at.timestamp() if event.answered_at is not None else 0.0
    return (1.0, answered + event.retry_after)
