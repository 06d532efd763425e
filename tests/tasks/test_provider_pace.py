"""The fleet's pace in one process: engine/provider_pace.py's keeper on a real Prefect API
and the studio database (SQLite and PostgreSQL), studio/db/provider_pace.py's row-locked
transitions and their crash recovery."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.events.filters import EventFilter, EventResourceFilter
from prefect.exceptions import ObjectNotFound

from engine.provider_pace import (
    PaceKeeper,
    PrefectLimit,
    _coalesced,
    _Job,
    recovered_line,
    throttled_line,
)
from studio.db import provider_pace as db
from studio.db.engine import session_scope
from studio.providers import pace as pace_hub
from studio.providers.aimd import IN_FORCE_SECONDS, Knobs, Succeeded, Throttled
from studio.providers.pace_settings import PaceSettings
from studio.settings import Settings

NAME = "provider:replicate"


async def set_limit(limit: int, name: str = NAME) -> None:
    async with get_client() as client:
        try:
            await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            await client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit, active=True)
            )
            return
        await client.update_global_concurrency_limit(
            name, GlobalConcurrencyLimitUpdate(limit=limit, active=True)
        )


async def prefect_limit(name: str = NAME) -> int:
    async with get_client() as client:
        return (await client.read_global_concurrency_limit_by_name(name)).limit


async def hold_slots(slots: int, name: str = NAME) -> None:
    """Prefect counts `slots` of the limit in use (calls holding them, by hand)."""
    async with get_client() as client:
        await client.update_global_concurrency_limit(
            name, GlobalConcurrencyLimitUpdate(active_slots=slots)
        )


@pytest.fixture
async def replicate_at_5() -> AsyncIterator[None]:
    """`provider:replicate` at 5 on the session's Prefect server, put back after."""
    await set_limit(5)
    yield
    await set_limit(5)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lines() -> Iterator[list[str]]:
    handler = Lines()
    log = logging.getLogger("studio.providers")
    log.addHandler(handler)
    old = log.level
    log.setLevel(logging.INFO)
    yield handler.lines
    log.removeHandler(handler)
    log.setLevel(old)


def keeper(observe_seconds: float = 0.0, **knobs: object) -> PaceKeeper:
    """A keeper that reads Prefect's limit at every adjustment unless told otherwise."""
    settings = PaceSettings(_env_file=None, **knobs)  # type: ignore[arg-type]
    return PaceKeeper(settings, {"replicate": 5, "modal": 3}, observe_seconds=observe_seconds)


def changes(provider: str = "replicate") -> list[tuple[int, int, str]]:
    with session_scope() as session:
        found = db.limit_changes(session, datetime.now(UTC) - timedelta(hours=1),
                                 providers=[provider])
    return [(c.from_limit, c.to_limit, c.reason) for c in found]


def row(provider: str = "replicate") -> db.ProviderPace:
    with session_scope() as session:
        found = db.pace_row(session, provider)
        assert found is not None
        return found


async def test_a_burst_of_429s_lowers_prefect_limit_once_and_says_so(
    any_database, replicate_at_5, lines
) -> None:
    pace = keeper()
    for _ in range(25):  # every call in flight answered 429 at once
        pace.throttled("replicate", 429, 10.0)
    assert pace.flush()
    assert await prefect_limit() == 3
    assert changes() == [(5, 3, "throttled")]
    with session_scope() as session:
        last = db.last_change(session, "replicate")
    assert last is not None and (last.status, last.retry_after) == (429, 10.0)
    assert lines.count("Provider throttled | Provider: replicate | Limit: 5 -> 3 | "
                       "Retry-After: 10s") == 1
    assert [line for line in lines if line.startswith("Provider ")] == [
        "Provider throttled | Provider: replicate | Limit: 5 -> 3 | Retry-After: 10s"
    ]
    saved = row()
    assert (saved.current, saved.pending_to, saved.manual_cap) == (3, None, None)
    # this process's next call waits for the Retry-After at once, before any database read
    until = pace.fleet_until("replicate")
    assert until is not None and until > datetime.now(UTC) + timedelta(seconds=9)


async def test_a_call_sent_at_the_lowered_limit_and_throttled_again_lowers_again(
    any_database, replicate_at_5
) -> None:
    pace = keeper(cooldown_seconds=30.0)  # only the send times tell the events apart
    sent = time.time()
    for _ in range(10):  # the calls in flight when the provider's capacity fell
        pace.throttled("replicate", 429, None, sent)
    assert pace.flush()
    assert changes() == [(5, 3, "throttled")]
    # a late answer to a call sent before the decrease was in force: the same event
    pace.throttled("replicate", 429, None, sent + 0.1)
    assert pace.flush()
    assert changes() == [(5, 3, "throttled")]
    # a call sent at the lowered limit and refused again: 3 is still too high
    await asyncio.sleep(IN_FORCE_SECONDS + 0.1)
    pace.throttled("replicate", 429, None, time.time())
    assert pace.flush()
    assert changes() == [(5, 3, "throttled"), (3, 2, "throttled")]
    assert await prefect_limit() == 2


async def test_a_change_counts_from_when_it_is_in_force(any_database) -> None:
    """A change's quiet window and its event's end run from when Prefect has it, not from
    the decision: on a loaded server the two Prefect calls of a change took a second, and
    a window counted from the decision let the next raise come that much early."""
    now = [datetime(2026, 12, 4, 12, 0, tzinfo=UTC)]

    def clock() -> datetime:
        return now[0]

    class SlowPrefect:  # each update takes 2 s of the test's clock
        limit = 20

        def read(self) -> int:
            return self.limit

        def write(self, limit: int) -> None:
            now[0] += timedelta(seconds=2)
            self.limit = limit

        def in_flight(self) -> None:
            return None

    prefect, knobs = SlowPrefect(), Knobs()
    decided = now[0]
    outcome = db.adjust("replicate", 20, Throttled(429, None), knobs, prefect,
                        sessions=session_scope, clock=clock)
    assert outcome.change is not None and (prefect.limit, outcome.current) == (15, 15)
    in_force = decided + timedelta(seconds=2)
    saved = row()
    assert db.aware(saved.last_change_at) == in_force == db.aware(saved.last_decrease_at)
    # a call sent while the change was on its way, refused after: the same event
    now[0] = in_force + timedelta(seconds=0.3)
    sent = (in_force - timedelta(seconds=0.5)).timestamp()
    db.adjust("replicate", 20, Throttled(429, None, datetime.fromtimestamp(sent, UTC)),
              knobs, prefect, sessions=session_scope, clock=clock)
    assert prefect.limit == 15
    # the quiet window (1 s) runs from the last throttle, 0.7 s ago: no raise yet
    now[0] = in_force + timedelta(seconds=1.0)
    db.adjust("replicate", 20, Succeeded(), knobs, prefect, sessions=session_scope, clock=clock)
    assert prefect.limit == 15
    now[0] = in_force + timedelta(seconds=1.4)
    db.adjust("replicate", 20, Succeeded(), knobs, prefect, sessions=session_scope, clock=clock)
    assert prefect.limit == 16


async def test_a_throttle_lowers_from_the_slots_in_use_when_fewer_than_the_limit(
    any_database, replicate_at_5, lines
) -> None:
    """Two calls hold slots of a limit of 5 when the provider throttles: it is full at 2,
    so the limit goes to floor(2 x 0.75) = 1, not to 3 (which would bind nothing)."""
    await hold_slots(0)
    async with get_client() as client:
        await client.increment_concurrency_slots(names=[NAME], slots=2, mode="concurrency")
    try:
        pace = keeper()
        pace.throttled("replicate", 429, 1.0)
        assert pace.flush()
        assert await prefect_limit() == 1
        assert changes() == [(5, 1, "throttled")]
        assert throttled_line("replicate", 5, 1, 1.0) in lines
        assert row().last_throttle_limit == 2  # the load it throttled at: the probe point
    finally:
        await hold_slots(0)


async def test_quiet_successes_raise_by_one_up_to_the_ceiling(
    any_database, replicate_at_5, lines
) -> None:
    pace = keeper(raise_after_seconds=0.3, probe_after_seconds=0.6, cooldown_seconds=0.1)
    pace.throttled("replicate", 429, None)
    assert pace.flush()
    assert await prefect_limit() == 3
    deadline = time.monotonic() + 20
    while await prefect_limit() < 5 and time.monotonic() < deadline:
        pace.succeeded("replicate")
        assert pace.flush()
        await asyncio.sleep(0.1)
    for _ in range(8):  # more quiet windows: never above the ceiling
        await asyncio.sleep(0.35)
        pace.succeeded("replicate")
        assert pace.flush()
    assert await prefect_limit() == 5
    assert changes() == [(5, 3, "throttled"), (3, 4, "recovered"), (4, 5, "recovered")]
    assert recovered_line("replicate", 3, 4) in lines
    assert "Provider recovered | Provider: replicate | Limit: 4 -> 5" in lines
    assert throttled_line("replicate", 5, 3, None) in lines
    assert "Provider throttled | Provider: replicate | Limit: 5 -> 3 | Retry-After: none" in lines


async def test_a_limit_the_fleet_does_not_fill_is_not_raised(
    any_database, replicate_at_5
) -> None:
    """The raise reads the slots in use on Prefect: 1 of 3 held, however quiet, says
    nothing of the provider's capacity; all 3 held, +1."""
    pace = keeper(raise_after_seconds=0.2, cooldown_seconds=0.1)
    pace.throttled("replicate", 429, None)
    assert pace.flush()
    assert await prefect_limit() == 3
    try:
        await hold_slots(1)
        for _ in range(4):
            await asyncio.sleep(0.6)
            pace.succeeded("replicate")
            assert pace.flush()
        assert await prefect_limit() == 3
        await hold_slots(3)
        await asyncio.sleep(0.6)  # a success is asked at most twice a second
        pace.succeeded("replicate")
        assert pace.flush()
        assert await prefect_limit() == 4
        assert changes() == [(5, 3, "throttled"), (3, 4, "recovered")]
    finally:
        await hold_slots(0)


async def test_a_process_that_just_saw_a_throttle_asks_no_raise(
    any_database, replicate_at_5
) -> None:
    """A throttle this process saw is not yet in the fleet's row while its adjustment waits
    behind slower ones (each a Prefect read and update, seconds on a loaded server); its
    successes meanwhile must not raise the limit the provider is throttling at (issue 20's
    bench: a 15 -> 16 two seconds into a throttling burst)."""
    other, pace = keeper(raise_after_seconds=0.5, cooldown_seconds=0.0), keeper(
        raise_after_seconds=0.5, cooldown_seconds=0.0
    )
    other.throttled("replicate", 429, None)
    assert other.flush()
    assert await prefect_limit() == 3
    await asyncio.sleep(0.6)  # the row's throttle is older than the quiet window
    queued: list[object] = []
    pace._submit = lambda provider, event, done=None: queued.append(event)  # type: ignore[method-assign]
    pace.throttled("replicate", 429, None)  # seen here, its adjustment still queued
    pace.succeeded("replicate")
    assert len(queued) == 1  # the throttle only: no success asked
    del pace._submit  # the keeper's own again
    pace.succeeded("replicate")
    assert pace.flush()
    assert await prefect_limit() == 3


async def test_events_say_what_changed(any_database, replicate_at_5) -> None:
    pace = keeper(raise_after_seconds=0.0, probe_after_seconds=0.0, cooldown_seconds=0.0)
    since = datetime.now(UTC)
    pace.throttled("replicate", 503, 2.5)
    assert pace.flush()
    await asyncio.sleep(2.6)  # past the Retry-After: a success may raise it again
    pace.succeeded("replicate")
    assert pace.flush()
    assert await prefect_limit() == 4
    found: dict[str, dict] = {}
    async with get_client() as client:
        for _ in range(40):
            page = await client.read_events(
                filter=EventFilter(resource=EventResourceFilter(id=["studio.provider.replicate"])),
                limit=50,
            )
            found = {e.event: dict(e.payload) for e in page.events if e.occurred >= since}
            if {"studio.provider.throttled", "studio.provider.recovered"} <= set(found):
                break
            await asyncio.sleep(0.5)
    assert found["studio.provider.throttled"] == {
        "from_limit": 5, "to_limit": 3, "ceiling": 5, "retry_after": 2.5, "status": 503,
    }
    assert found["studio.provider.recovered"] == {
        "from_limit": 3, "to_limit": 4, "ceiling": 5, "retry_after": None, "status": None,
    }


async def test_an_operators_cap_is_kept_until_limits_apply(
    any_database, replicate_at_5, lines
) -> None:
    pace = keeper(raise_after_seconds=0.0, probe_after_seconds=0.0, cooldown_seconds=0.0)
    pace.succeeded("replicate")  # first sight: 5 = the ceiling, no cap
    assert pace.flush()
    await set_limit(2)  # the operator, on Prefect's Concurrency page
    for _ in range(5):
        pace.succeeded("replicate")
        assert pace.flush()
        await asyncio.sleep(0.55)
    assert await prefect_limit() == 2
    saved = row()
    assert (saved.current, saved.manual_cap) == (2, 2)
    assert changes() == [(5, 2, "manual")]
    assert any(line.startswith("Provider limit set by hand | Provider: replicate | "
                               "Limit: 5 -> 2") for line in lines)
    # a throttle still lowers it (1 is below the cap), the raise stops at the cap
    pace.throttled("replicate", 429, None)
    assert pace.flush()
    assert await prefect_limit() == 1
    for _ in range(4):
        await asyncio.sleep(0.55)
        pace.succeeded("replicate")
        assert pace.flush()
    assert await prefect_limit() == 2
    # `studio limits apply` puts the ceiling back and clears the cap
    await set_limit(5)
    with session_scope() as session:
        db.applied(session, "replicate", 5, 2)
    for _ in range(3):
        await asyncio.sleep(0.55)
        pace.succeeded("replicate")
        assert pace.flush()
    saved = row()
    assert (saved.current, saved.manual_cap) == (5, None)
    assert changes()[-1] == (2, 5, "applied")
    assert all(reason != "manual" for _, _, reason in changes()[1:])


async def test_a_limit_set_below_the_ceiling_before_first_sight_is_a_manual_cap(
    any_database, replicate_at_5
) -> None:
    await set_limit(2)
    pace = keeper(raise_after_seconds=0.0, probe_after_seconds=0.0)
    for _ in range(3):
        pace.succeeded("replicate")
        assert pace.flush()
        await asyncio.sleep(0.55)
    assert await prefect_limit() == 2
    assert row().manual_cap == 2


def _leave_pending(current: int, pending_to: int, age_seconds: float) -> None:
    """What a process that died between its two commits leaves in the row."""
    with session_scope() as session:
        locked = db.lock_row(session, "replicate")
        locked.ceiling, locked.current = 5, current
        locked.pending_to = pending_to
        locked.pending_at = datetime.now(UTC) - timedelta(seconds=age_seconds)


async def test_a_change_whose_process_died_before_prefect_was_told_is_dropped(
    any_database, replicate_at_5
) -> None:
    _leave_pending(current=5, pending_to=3, age_seconds=db.PENDING_STALE_SECONDS + 1)
    pace = keeper(raise_after_seconds=60.0)
    pace.succeeded("replicate")
    assert pace.flush()
    saved = row()
    assert (saved.current, saved.pending_to, saved.manual_cap) == (5, None, None)
    assert changes() == []  # lost that one adjustment, and no manual cap
    assert await prefect_limit() == 5


async def test_a_change_whose_process_died_after_prefect_was_told_is_completed(
    any_database, replicate_at_5
) -> None:
    _leave_pending(current=5, pending_to=3, age_seconds=db.PENDING_STALE_SECONDS + 1)
    await set_limit(3)  # it had reached Prefect
    pace = keeper(raise_after_seconds=60.0)
    pace.succeeded("replicate")
    assert pace.flush()
    saved = row()
    assert (saved.current, saved.pending_to, saved.manual_cap) == (3, None, None)
    assert changes() == [(5, 3, "throttled")]


async def test_a_change_on_its_way_is_neither_manual_nor_repeated(
    any_database, replicate_at_5
) -> None:
    _leave_pending(current=5, pending_to=3, age_seconds=0.0)
    await set_limit(3)  # Prefect told, the final commit not yet made
    pace = keeper(cooldown_seconds=0.0)
    pace.throttled("replicate", 429, None)  # no second change while one is on its way
    pace.succeeded("replicate")
    assert pace.flush()
    saved = row()
    assert (saved.current, saved.pending_to, saved.manual_cap) == (5, 3, None)
    assert changes() == []
    assert await prefect_limit() == 3


async def test_a_failed_prefect_update_clears_its_pending_change(
    any_database, replicate_at_5
) -> None:
    class Refused(PrefectLimit):
        def write(self, limit: int) -> None:
            raise ConnectionError("the Prefect API went away")

    pace = keeper()
    with pytest.raises(ConnectionError):
        db.adjust("replicate", 5, Throttled(429, None), Knobs(), Refused(pace, "replicate"),
                  sessions=session_scope)
    saved = row()
    assert (saved.current, saved.pending_to, saved.manual_cap) == (5, None, None)
    assert changes() == []
    assert await prefect_limit() == 5


async def test_retry_after_holds_every_keeper_of_the_fleet(any_database, replicate_at_5) -> None:
    seen, other = keeper(), keeper()  # two processes' keepers on one database
    started = time.monotonic()
    await other.before_call("replicate")  # nothing recorded: no wait
    assert time.monotonic() - started < 0.5
    seen.throttled("replicate", 429, 2.0)
    assert seen.flush()
    await asyncio.sleep(0.5)  # what `other` read a moment ago has gone stale
    until = row().throttled_until
    assert until is not None
    until = db.aware(until)
    assert until is not None
    remaining = (until - datetime.now(UTC)).total_seconds()  # less on a stalled machine
    started = time.monotonic()
    await other.before_call("replicate")
    waited = time.monotonic() - started
    assert datetime.now(UTC) >= until - timedelta(seconds=0.05)  # held until the fleet's end
    assert remaining - 0.1 <= waited < max(remaining, 0.0) + 0.5, (waited, remaining)
    # the cache: a busy batch reads the row at most every 0.5 s
    started = time.monotonic()
    await asyncio.gather(*(other.before_call("replicate") for _ in range(200)))
    assert time.monotonic() - started < 1.0


async def test_a_provider_without_a_limit_gets_the_retry_after_only(
    any_database, lines
) -> None:
    pace = keeper()
    pace.throttled("anthropic", 529, 2.0)
    pace.throttled("anthropic", 529, 2.0)
    assert pace.flush()
    saved = row("anthropic")
    assert saved.current is None and saved.throttled_until is not None
    assert lines.count(
        "Provider throttled | Provider: anthropic | Limit: none -> none | Retry-After: 2s"
    ) == 1
    started = time.monotonic()
    await keeper().before_call("anthropic")
    assert 1.0 <= time.monotonic() - started < 3.0


async def test_fixed_caps_never_change_the_limit(any_database, replicate_at_5, lines) -> None:
    pace = keeper(adaptive=False)
    pace.throttled("replicate", 429, 1.0)
    assert pace.flush()
    started = time.monotonic()
    await keeper(adaptive=False).before_call("replicate")
    assert time.monotonic() - started >= 0.7  # Retry-After still fleet-wide
    for _ in range(3):
        pace.succeeded("replicate")
        assert pace.flush()
        await asyncio.sleep(0.55)
    assert await prefect_limit() == 5
    assert changes() == []
    assert "Provider throttled | Provider: replicate | Limit: 5 -> 5 | Retry-After: 1s" in lines


async def test_a_database_that_is_away_never_holds_calls_back(
    replicate_at_5, lines
) -> None:
    away = Settings(DATABASE_URL="sqlite:////proc/no-such-dir/studio.db")  # cannot be made

    def sessions():  # type: ignore[no-untyped-def]
        return session_scope(away)

    pace = PaceKeeper(PaceSettings(_env_file=None), {"replicate": 5}, sessions=sessions)
    pace.throttled("replicate", 429, None)  # never raises in the caller
    assert pace.flush()
    started = time.monotonic()
    await pace.before_call("replicate")
    assert time.monotonic() - started < 0.5
    assert any(line.startswith("Could not adjust the pace of replicate") for line in lines)
    assert await prefect_limit() == 5


async def test_install_registers_one_listener(any_database) -> None:
    from engine import provider_pace

    provider_pace.uninstall()
    try:
        provider_pace.install()
        provider_pace.install()
        keepers = [x for x in pace_hub.listeners() if isinstance(x, PaceKeeper)]
        assert len(keepers) == 1 and keepers[0] is provider_pace.keeper()
    finally:
        provider_pace.uninstall()
    assert not any(isinstance(x, PaceKeeper) for x in pace_hub.listeners())


def test_a_backlog_of_successes_is_one_check_with_the_latest_let_in_time() -> None:
    """Successes queued together are one check; it says a call was let in under the
    limit in force if any of them was (the latest time), and an unknown time counts."""
    ctx = contextvars.copy_context()
    t1, t2 = datetime(2026, 12, 5, 9, tzinfo=UTC), datetime(2026, 12, 5, 9, 0, 1, tzinfo=UTC)
    [job] = _coalesced([_Job("replicate", Succeeded(t2), ctx),
                        _Job("replicate", Succeeded(t1), ctx)])
    assert job.event == Succeeded(t2)
    [job] = _coalesced([_Job("replicate", Succeeded(t1), ctx),
                        _Job("replicate", Succeeded(None), ctx)])
    assert job.event == Succeeded(None)


def test_a_backlog_of_throttles_keeps_the_pause_that_ends_last() -> None:
    """Throttling answers queued together are one event whose Retry-After is the one
    that ends last, counted from its own answer, with the latest send time."""
    ctx = contextvars.copy_context()
    t0 = datetime(2026, 12, 5, 9, tzinfo=UTC)
    early_long = Throttled(429, 2.0, t0, answered_at=t0 + timedelta(seconds=0.5))
    late_short = Throttled(429, 1.0, t0 + timedelta(seconds=1), t0 + timedelta(seconds=2))
    [job] = _coalesced([_Job("replicate", early_long, ctx), _Job("replicate", late_short, ctx)])
    assert job.event == Throttled(429, 1.0, t0 + timedelta(seconds=1),
                                  t0 + timedelta(seconds=2))  # ends at 3 s, not 2.5 s
    [job] = _coalesced([_Job("replicate", late_short, ctx),
                        _Job("replicate", Throttled(429, None, t0), ctx)])
    assert job.event == late_short  # an answer without a Retry-After pauses nothing


async def test_a_slow_prefect_read_holds_no_other_processs_throttle_back(
    any_database, replicate_at_5
) -> None:
    """Prefect's limit is read before the provider's row is locked: one process's round
    trip to a busy Prefect server does not queue another's decision, nor the fleet-wide
    Retry-After it writes, behind it (issue 20's bench: 1-3 s under load, and the other
    processes kept sending into the throttled provider meanwhile)."""
    pace = keeper()
    reading, release = threading.Event(), threading.Event()

    class Slow(PrefectLimit):
        def read(self) -> int | None:
            reading.set()
            release.wait(30)
            return super().read()

    def adjust(limit: PrefectLimit, retry_after: float) -> None:
        db.adjust("replicate", 5, Throttled(429, retry_after, answered_at=datetime.now(UTC)),
                  Knobs(), limit, sessions=session_scope)

    slow = threading.Thread(target=contextvars.copy_context().run,
                            args=(adjust, Slow(pace, "replicate"), 30.0))
    quick = threading.Thread(target=contextvars.copy_context().run,
                             args=(adjust, PrefectLimit(pace, "replicate"), 10.0))
    slow.start()
    try:
        assert reading.wait(10)
        quick.start()
        quick.join(10)
        assert not quick.is_alive(), "the second decision waited for the first one's read"
        assert slow.is_alive()  # still in its read: the quick one did not wait for it
        until = row().throttled_until
        assert until is not None and db.aware(until) > datetime.now(UTC) + timedelta(seconds=8)
    finally:
        release.set()
        slow.join(30)
    assert changes() == [(5, 3, "throttled")]  # one event: the second is inside its cooldown


async def test_taken_in_returns_once_the_throttle_is_in_the_fleets_row(
    any_database, replicate_at_5
) -> None:
    """A throttled call gives its slot back when the fleet has its throttle (the limit
    lowered, the Retry-After shared): `taken_in` waits for this process's adjustment,
    held here behind another transaction's lock on the provider's row."""
    pace = keeper()
    locked, release = threading.Event(), threading.Event()

    def hold_the_row() -> None:
        with session_scope() as session:
            db.lock_row(session, "replicate")
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=contextvars.copy_context().run, args=(hold_the_row,))
    holder.start()
    try:
        assert locked.wait(10)
        pace.throttled("replicate", 429, 10.0)
        waiting = asyncio.create_task(pace.taken_in("replicate"))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # its adjustment waits for the row
    finally:
        release.set()
        holder.join(30)
    await asyncio.wait_for(waiting, 5)
    assert row().throttled_until is not None and await prefect_limit() == 3
    await asyncio.wait_for(pace.taken_in("replicate"), 1)  # nothing pending: at once
