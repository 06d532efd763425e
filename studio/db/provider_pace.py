"""Row-locked, crash-safe transitions of a provider's fleet-wide pace (issue 20).

Why a row and a lock: every process of every host reports its provider's throttling
answers and accepted jobs; the one limit on Prefect (`provider:<name>`) must move once
per throttling event and stay inside [1, min(ceiling, manual cap)] however many
processes decide at once. So each decision (studio/providers/aimd.py) is taken with the
provider's `provider_pace` row locked (`SELECT ... FOR UPDATE` on PostgreSQL; on SQLite
the transaction's first statement is a write, which takes the file's write lock), and
Prefect's limit is read under that lock whenever the decision is to change it (and
again just before it is updated).

Crash safety: a change is written as `pending_to` first (committed), then Prefect is
told, then `current` is committed. Under the lock, Prefect's limit L is read and:

- L == current, or a fresh pending change's L == pending_to: ours (in force or on its way);
- a pending change older than `PENDING_STALE_SECONDS` (its process died): L == pending_to
  means it reached Prefect (completed now, recorded), L == current means it never did
  (dropped: at most that one adjustment is lost);
- any other L is an operator's manual cap: recorded as a "manual" change, `current` and
  `manual_cap` become L, and no raise ever goes above it until `studio limits apply`
  clears it (`applied`).

Prefect is reached through `LimitAccess` (engine/provider_pace.py gives it a Prefect
client), so this module stays free of Prefect. Timestamps are each host's UTC clock.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from studio.db.models import ProviderLimitChange, ProviderPace
from studio.providers import aimd

#: a pending change older than this belongs to a process that died before finishing it
#: (the two Prefect calls after its first commit take milliseconds; engine/provider_pace.py
#: gives each up after 10 s, so a live change is never taken for a dead one's)
PENDING_STALE_SECONDS = 45.0

REASONS = ("throttled", "recovered", "applied", "manual")


@dataclass(frozen=True)
class LimitChange:
    provider: str
    at: datetime
    from_limit: int
    to_limit: int
    reason: str
    status: int | None
    retry_after: float | None


class LimitAccess(Protocol):
    """A provider's limit on the orchestrator (Prefect's `provider:<name>`)."""

    def read(self) -> int | None:
        """The limit in force; None when there is no such limit."""
        ...

    def write(self, limit: int) -> None:
        """Put `limit` in force."""
        ...

    def in_flight(self) -> int | None:
        """The limit's slots in use at the last `read` (None: not known)."""
        ...


Sessions = Callable[[], AbstractContextManager[Session]]


@dataclass(frozen=True)
class Outcome:
    """What one `adjust` did: the decision's own change (None when the limit stayed),
    changes it found and recorded (manual caps, a dead process's completed change), the
    fleet-wide Retry-After now in force, and whether this was a new throttling event."""

    provider: str
    change: LimitChange | None
    noted: tuple[LimitChange, ...]
    throttled_until: datetime | None
    ceiling: int | None
    current: int | None
    new_event: bool = False


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(when: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes for timezone columns: they are UTC."""
    if when is None or when.tzinfo is not None:
        return when
    return when.replace(tzinfo=UTC)


def _change(row: ProviderLimitChange) -> LimitChange:
    at = aware(row.at)
    assert at is not None
    return LimitChange(
        provider=row.provider, at=at, from_limit=row.from_limit, to_limit=row.to_limit,
        reason=row.reason, status=row.status, retry_after=row.retry_after,
    )


# --- what `studio limits show`, the batch artifact and the bench read ---------------


def pace_row(session: Session, provider: str) -> ProviderPace | None:
    return session.get(ProviderPace, provider)


def last_change(session: Session, provider: str) -> LimitChange | None:
    row = session.scalars(
        select(ProviderLimitChange)
        .where(ProviderLimitChange.provider == provider)
        .order_by(ProviderLimitChange.at.desc(), ProviderLimitChange.id.desc())
        .limit(1)
    ).first()
    return _change(row) if row is not None else None


def limit_changes(
    session: Session,
    since: datetime,
    until: datetime | None = None,
    providers: Collection[str] | None = None,
) -> list[LimitChange]:
    """Changes at or after `since` (and before `until`), oldest first."""
    query = select(ProviderLimitChange).where(ProviderLimitChange.at >= since)
    if until is not None:
        query = query.where(ProviderLimitChange.at < until)
    if providers is not None:
        query = query.where(ProviderLimitChange.provider.in_(list(providers)))
    query = query.order_by(ProviderLimitChange.at, ProviderLimitChange.id)
    return [_change(row) for row in session.scalars(query)]


def throttled_until(session: Session, provider: str) -> datetime | None:
    """The fleet-wide Retry-After of `provider` (None: none recorded)."""
    value = session.scalar(
        select(ProviderPace.throttled_until).where(ProviderPace.provider == provider)
    )
    return aware(value)


def fleet_view(session: Session, provider: str) -> tuple[datetime | None, int | None]:
    """(the fleet-wide Retry-After, the limit in force) of `provider`, in one read: what
    every process's calls wait for, and what its slot pool holds itself to."""
    row = session.execute(
        select(ProviderPace.throttled_until, ProviderPace.current).where(
            ProviderPace.provider == provider
        )
    ).first()
    if row is None:
        return None, None
    return aware(row[0]), row[1]


def applied(session: Session, provider: str, ceiling: int, previous: int | None) -> None:
    """`studio limits apply` put `ceiling` on Prefect: it is the limit in force, any
    manual cap and pending change are cleared, and the history says so."""
    row = lock_row(session, provider)
    now = utcnow()
    row.ceiling = ceiling
    row.current = ceiling
    row.manual_cap = None
    row.pending_to = None
    row.pending_at = None
    row.last_change_at = now
    _climb_forgotten(row)
    _record(session, provider, now, previous if previous is not None else ceiling, ceiling,
            "applied")


# --- the transitions ------------------------------------------------------------------


def lock_row(session: Session, provider: str) -> ProviderPace:
    """The provider's row, created if missing, locked until the transaction ends."""
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    # on SQLite this first write also takes the database's write lock for the transaction
    session.execute(
        insert(ProviderPace).values(provider=provider).on_conflict_do_nothing(
            index_elements=["provider"]
        )
    )
    if dialect == "sqlite":
        session.execute(
            update(ProviderPace)
            .where(ProviderPace.provider == provider)
            .values(provider=ProviderPace.provider)
        )
    query = select(ProviderPace).where(ProviderPace.provider == provider)
    if dialect != "sqlite":
        query = query.with_for_update()
    return session.scalars(query.execution_options(populate_existing=True)).one()


def _holder() -> tuple[str, str]:
    return socket.gethostname()[:120], str(os.getpid())


def _record(
    session: Session,
    provider: str,
    at: datetime,
    from_limit: int,
    to_limit: int,
    reason: str,
    status: int | None = None,
    retry_after: float | None = None,
) -> LimitChange:
    host, pid = _holder()
    row = ProviderLimitChange(
        provider=provider, at=at, from_limit=from_limit, to_limit=to_limit, reason=reason,
        status=status, retry_after=retry_after, host=host, pid=pid,
    )
    session.add(row)
    return LimitChange(provider, at, from_limit, to_limit, reason, status, retry_after)


def reconcile(
    session: Session, row: ProviderPace, observed: int | None, ceiling: int | None,
    now: datetime,
) -> list[LimitChange]:
    """Bring the locked `row` in line with the limit Prefect has (`observed`)."""
    row.ceiling = ceiling
    if observed is None:
        return []
    if row.current is None:  # first sight: a limit below the ceiling was set by a person
        row.current = observed
        row.manual_cap = observed if ceiling is not None and observed < ceiling else None
        return []
    if row.pending_to is not None:
        pending_at = aware(row.pending_at)
        fresh = pending_at is not None and (now - pending_at).total_seconds() < (
            PENDING_STALE_SECONDS
        )
        if fresh and observed in (row.current, row.pending_to):
            return []  # a change on its way
        if observed == row.pending_to:  # a dead process's change reached Prefect
            reason = "throttled" if row.pending_to < row.current else "recovered"
            done = _record(session, row.provider, now, row.current, row.pending_to, reason)
            row.current, row.pending_to, row.pending_at = row.pending_to, None, None
            row.last_change_at = now
            return [done]
        if observed == row.current:  # ... or never did: that one adjustment is lost
            row.pending_to = row.pending_at = None
            row.raise_step = None  # no raise of it is in force to step back
            return []
    elif observed == row.current:
        return []
    manual = _record(session, row.provider, now, row.current, observed, "manual")
    row.current = row.manual_cap = observed
    row.pending_to = row.pending_at = None
    row.last_change_at = now
    _climb_forgotten(row)
    return [manual]


def _climb_forgotten(row: ProviderPace) -> None:
    """A limit a person set is no step of the climb: nothing to step back to, and the
    limit that held before it says nothing of the one set now."""
    row.raise_step = row.held_limit = None


def state_of(row: ProviderPace, limit_exists: bool) -> aimd.PaceState:
    """The decision's view of `row`: no limit (current and ceiling None) when Prefect has
    none; a limit not known now (current None, the ceiling kept) while a change is on its
    way to Prefect."""
    return aimd.PaceState(
        current=row.current if limit_exists and row.pending_to is None else None,
        ceiling=row.ceiling if limit_exists else None,
        manual_cap=row.manual_cap,
        last_throttle_limit=row.last_throttle_limit,
        last_throttle_at=aware(row.last_throttle_at),
        last_decrease_at=aware(row.last_decrease_at),
        last_change_at=aware(row.last_change_at),
        last_success_at=aware(row.last_success_at),
        held_limit=row.held_limit,
        raise_step=row.raise_step,
        throttled_until=aware(row.throttled_until),
    )


_WRITTEN = tuple(f.name for f in fields(aimd.PaceState) if f.name not in ("current", "ceiling"))


def adjust(
    provider: str,
    ceiling: int | None,
    event: aimd.Event,
    knobs: aimd.Knobs,
    limit: LimitAccess,
    *,
    sessions: Sessions,
    clock: Callable[[], datetime] = utcnow,
    observe: bool = False,
) -> Outcome:
    """Decide on `event` with the row locked; a limit change goes pending_to -> Prefect
    -> current (crash-safe).

    Prefect's limit is read only when it matters: the decision would change the limit,
    the row has never seen it, a pending change is stale, or the caller asks (`observe`:
    now and then, so a manual cap shows in `studio limits show` without waiting for a
    change). Most answers (those inside a cooldown, successes before the quiet window)
    cost one short transaction and no API call.

    For a throttle and an `observe` the limit is read before the row is locked, and
    trusted under the lock when it is the one the row knows (in force or on its way);
    any other value is read again under the lock (an operator's cap, another process's
    change meanwhile). Why: read under the lock, each process's round trip to a busy
    Prefect server queued every other process's decision behind it (1-3 s with six
    batch processes, issue 20's bench), and the fleet's Retry-After, written by the
    same transaction, reached the other processes after the burst it was meant to stop."""
    early = limit.read() if observe or isinstance(event, aimd.Throttled) else None
    with sessions() as session:
        row = lock_row(session, provider)
        now = clock()
        row.ceiling = ceiling
        decision = aimd.decide(state_of(row, True), event, now, knobs)
        noted: list[LimitChange] = []
        pending_at = aware(row.pending_at)
        stale = pending_at is not None and (now - pending_at).total_seconds() >= (
            PENDING_STALE_SECONDS
        )
        if (
            observe or row.current is None or stale
            or (decision is not None and decision.to_limit is not None)
        ):
            known = early is not None and early in (row.current, row.pending_to)
            observed = early if known else limit.read()
            noted = reconcile(session, row, observed, ceiling, now)
            decision = aimd.decide(
                state_of(row, observed is not None), event, now, knobs, limit.in_flight()
            )
        if decision is not None:
            for name in _WRITTEN:
                setattr(row, name, getattr(decision.state, name))
        to = decision.to_limit if decision is not None else None
        from_limit = row.current
        if to is not None:
            row.pending_to, row.pending_at = to, now
        new_event = decision is not None and decision.new_event
        until = aware(row.throttled_until)
        current = row.current
    if to is None or from_limit is None:
        return Outcome(provider, None, tuple(noted), until, ceiling, current, new_event)
    assert decision is not None and decision.reason is not None
    status = event.status if isinstance(event, aimd.Throttled) else None
    retry_after = event.retry_after if isinstance(event, aimd.Throttled) else None

    def done(session: Session, row: ProviderPace) -> LimitChange:
        """The change is in force: from now on the quiet window before a raise runs, and
        a refused call sent from now on is a new event. Stamped at the decision, a change
        whose two Prefect calls took a second on a loaded server (issue 20's bench) was
        "quiet" for that second before it bound anything, and the next raise came early."""
        assert decision is not None and decision.reason is not None and from_limit is not None
        change = _record(session, provider, now, from_limit, to, decision.reason, status,
                         retry_after)
        row.current, row.pending_to, row.pending_at = to, None, None
        in_force = clock()
        row.last_change_at = in_force
        if decision.reason == "throttled":
            row.last_decrease_at = in_force
        return change

    try:
        with sessions() as session:
            row = lock_row(session, provider)
            if row.pending_to != to or aware(row.pending_at) != now:
                # settled by another process meanwhile (only after PENDING_STALE_SECONDS)
                return Outcome(provider, None, tuple(noted), until, ceiling, row.current,
                               new_event)
            # read again just before telling Prefect: an operator who set the limit since
            # keeps their value (Prefect has no compare-and-set: the window left is this
            # one round trip)
            seen = limit.read()
            if seen != from_limit:
                row.pending_to = row.pending_at = None
                more = reconcile(session, row, seen, ceiling, clock())
                return Outcome(provider, None, (*noted, *more), until, ceiling, row.current,
                               new_event)
            limit.write(to)
            change = done(session, row)
    except Exception:
        _settle_after_failure(provider, to, now, from_limit, limit, sessions, done)
        raise
    return Outcome(provider, change, tuple(noted), until, ceiling, to, new_event)


def _settle_after_failure(
    provider: str, to: int, pending_at: datetime, from_limit: int, limit: LimitAccess,
    sessions: Sessions, done: Callable[[Session, ProviderPace], LimitChange],
) -> None:
    """Telling Prefect failed (or the commit after it): settle the pending change by what
    Prefect has now; when even that fails it stays pending and `reconcile` settles it
    after PENDING_STALE_SECONDS."""
    try:
        with sessions() as session:
            row = lock_row(session, provider)
            if row.pending_to != to or aware(row.pending_at) != pending_at:
                return
            seen = limit.read()
            if seen == from_limit:  # Prefect was not told: the adjustment is lost
                row.pending_to = row.pending_at = None
            elif seen == to:
                done(session, row)
    except Exception:
        return


def iter_rows(session: Session) -> Iterator[ProviderPace]:
    yield from session.scalars(select(ProviderPace).order_by(ProviderPace.provider))
