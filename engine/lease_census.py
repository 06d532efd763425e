"""The pipeline's own count of the provider slots its processes hold, in the studio database.

WHY: a Prefect server counts a global limit's slots in its database but keeps the leases
that hold them in a lease storage, by default in its own memory. After a restart it knows
no lease, so a slot whose call ends is never given back (issue 10: `provider:comfyui`
10 of 10 active with nothing in flight, until reset by hand). The server's API lists no
leases per limit, so the only count that holds on such a server is our own:

- a pool writes a row *before* it asks the server for a slot (`reserve`),
- its process beats every `BEAT_SECONDS` while it holds open rows (one UPDATE per process),
- it stamps `released_at` *after* the server took the slot back (`released`).

So every slot the server counts for a `provider:*` limit has a live row from before it
was counted until after it stopped being counted. The reconcile (engine/slot_reconcile.py)
reads the server's count first, then `live()`, and frees only the difference: a row
released a moment ago still counts, a row of a dead process stops counting only after
`STALE_SECONDS` (longer than Prefect takes to expire its lease by itself), so what it
frees is never a slot a live call holds.

Only where it is needed: a server whose lease storage keeps leases through a restart
(`DURABLE_LEASE_STORAGES`: the filesystem storage every server this project starts uses,
or Redis) expires a dead holder's lease with its own repossessor, so there is nothing
to count. The census reads the server's lease storage once per process and API URL
(`GET /api/admin/settings`, `server.concurrency.lease_storage`) at its first `reserve`,
and records nothing (no rows, no heartbeat thread) on such a server. A storage it could
not read counts as one that loses leases (rows cost little; a missed leak costs a
provider); the reconcile acts only on a server that said so (`leases_expire_on_their_own`).

The same table holds the fleet's queue for slots (`queue`): one row per process and provider
with waiting images, id `queue:...`, its `created_at` the process's place in line (when
its oldest waiting image asked, or when it was last served, whichever is later: first
come, first served, a process served goes to the back), beaten while it waits and deleted
when nothing waits. Unlike the census it is written on every server (it is how pools of
different processes share a limit fairly, engine/provider_slots.py), and `live()` never
counts it: it holds no slot.

Clocks: rows are stamped with each host's UTC clock; the margins (seconds) assume hosts
kept in time by NTP.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from functools import partial

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from studio.db.models import ProviderLease

log = logging.getLogger("studio.providers")

#: how often a live process stamps its open rows
BEAT_SECONDS = 15.0
#: a row not beaten for this long belongs to a dead process. Longer than the worst case
#: Prefect needs to free a dead process's lease itself (a 60 s lease + its repossessor
#: loop, 15 s by default), so the reconcile never frees a slot Prefect frees too.
STALE_SECONDS = 120.0
#: a row released this recently still counts: the server may have counted the slot
#: when the reconcile read it
RELEASED_GRACE_SECONDS = 5.0
#: released or stale rows older than this are deleted by `purge`
KEEP_SECONDS = 3600.0
#: lease storages that keep a lease through a server restart and whose expired leases
#: Prefect's repossessor frees: on a server using one, no census or reconcile is needed
DURABLE_LEASE_STORAGES = frozenset({
    "prefect.server.concurrency.lease_storage.filesystem",
    "engine.lease_storage",  # the filesystem storage, queued in memory (the project's servers)
    "prefect_redis.lease_storage",
})
#: how long the one settings read may take (a server that does not answer is a server
#: whose storage is unknown)
SETTINGS_TIMEOUT_SECONDS = 10.0

#: id prefix of the fleet queue's rows (one per process and provider with waiting images)
QUEUE_PREFIX = "queue:"
#: a queue row not beaten for this long belongs to a process that no longer waits (dead,
#: or its loop stalled): the others stop giving way to it
QUEUE_STALE_SECONDS = 3.0

_lease_storages: dict[str, str] = {}


def server_lease_storage() -> str:
    """`server.concurrency.lease_storage` of the Prefect server this process talks to
    (`GET /api/admin/settings`), read once per process and API URL; raises when the
    server does not answer (an HTTP error names the status, as any API call's does)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value() or ""  # "": Prefect's temporary server of this process
    if url not in _lease_storages:
        _lease_storages[url] = _read_lease_storage()
    return _lease_storages[url]


def _read_lease_storage() -> str:
    """Through the batch's shared sync client when there is one (engine/run_clients.py;
    used from this worker thread, never entered: entering counts on the client), else a
    client of its own, whose creation (~60 ms: an SSL context) would otherwise delay the
    first image's slot."""
    from prefect.client.orchestration import get_client
    from prefect.context import SyncClientContext

    shared = SyncClientContext.get()
    if shared is not None:
        settings = shared.client.request("GET", "/admin/settings").json()
    else:
        with get_client(
            httpx_settings={"timeout": SETTINGS_TIMEOUT_SECONDS}, sync_client=True
        ) as client:
            settings = client.request("GET", "/admin/settings").json()
    return str(settings["server"]["concurrency"]["lease_storage"])


def leases_expire_on_their_own() -> bool:
    """Whether the server keeps leases through a restart and frees a dead holder's slots
    itself: then there is nothing for a census to count or a reconcile to free. Raises
    when the server does not answer."""
    return server_lease_storage() in DURABLE_LEASE_STORAGES


def _now() -> datetime:
    return datetime.now(UTC)


def _epoch(at: datetime) -> float:
    """Epoch seconds of a stamp (SQLite gives it back without its UTC zone)."""
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


class LeaseCensus:
    """Rows of `provider_lease` for this process (`holder` = host:pid), on a server that
    loses leases. Blocking calls: the async pool runs them in a thread."""

    def __init__(
        self,
        sessions: Callable[[], AbstractContextManager[Session]] | None = None,
        *,
        holder: str | None = None,
        beat_seconds: float = BEAT_SECONDS,
    ) -> None:
        if sessions is None:
            from studio.db.engine import session_scope
            from studio.settings import get_settings

            # bound to the database of its making: its heartbeat thread outlives a
            # caller that moves the process to another database (tests do)
            sessions = partial(session_scope, get_settings())
        self._sessions = sessions
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.beat_seconds = beat_seconds
        self._beating: threading.Thread | None = None
        self._stop = threading.Event()
        #: slots reserved so far; the heartbeat ends only when none came since its last beat
        self._reservations = 0
        self._beat_lock = threading.Lock()
        self._recording: bool | None = None
        #: per provider, the place last written to the queue and when
        self._queued: dict[str, tuple[float | None, datetime]] = {}

    def recording(self) -> bool:
        """Whether this census records slots: not on a server whose leases expire on their
        own. Decided at the first call; a server that does not answer then counts as one
        that loses leases (see the module docstring)."""
        if self._recording is None:
            try:
                self._recording = not leases_expire_on_their_own()
            except Exception as exc:
                log.warning("Could not read the Prefect server's lease storage (%s): "
                            "recording the provider lease census", type(exc).__name__)
                self._recording = True
        return self._recording

    # --- one slot's life ---

    def reserve(self, provider: str) -> str | None:
        """A row for a slot about to be asked for; returns its id and starts the heartbeat.
        None, and nothing written, on a server whose leases expire on their own."""
        if not self.recording():
            return None
        row_id = str(uuid.uuid4())
        now = _now()
        with self._sessions() as session:
            session.add(ProviderLease(
                id=row_id, provider=provider, holder=self.holder, created_at=now, beat_at=now,
            ))
        self._ensure_beating()
        return row_id

    def granted(self, row_id: str, lease_id: str | None) -> None:
        with self._sessions() as session:
            session.execute(
                update(ProviderLease).where(ProviderLease.id == row_id)
                .values(lease_id=lease_id, beat_at=_now())
            )

    def released(self, row_id: str) -> None:
        """The server no longer counts this slot (released, refused, or never granted)."""
        with self._sessions() as session:
            session.execute(
                update(ProviderLease).where(ProviderLease.id == row_id)
                .values(released_at=_now())
            )

    def forget(self, row_id: str) -> None:
        """The slot was never counted by the server (refused, or never asked): no row."""
        with self._sessions() as session:
            session.execute(delete(ProviderLease).where(ProviderLease.id == row_id))

    # --- the fleet's queue for slots ---

    def queue_id(self, provider: str) -> str:
        digest = hashlib.sha256(f"{self.holder}|{provider}".encode()).hexdigest()
        return QUEUE_PREFIX + digest[: 36 - len(QUEUE_PREFIX)]

    def queue(self, provider: str, place: float | None) -> list[float]:
        """Publish this process's place in `provider`'s queue (epoch seconds; None: nothing
        waits, the row goes) and return the places of the other processes waiting now.

        One transaction: an update (or insert) and a read, so a waiting process costs one
        round trip per look; the write only when its place moved or its row needs a beat
        (every QUEUE_STALE_SECONDS / 3), the read every time."""
        row_id = self.queue_id(provider)
        now = _now()
        last = self._queued.get(provider)
        fresh = last is not None and last[0] == place and (
            now - last[1] < timedelta(seconds=QUEUE_STALE_SECONDS / 3)
        )
        with self._sessions() as session:
            if fresh:
                pass  # the row says it already
            elif place is None:
                session.execute(delete(ProviderLease).where(ProviderLease.id == row_id))
            else:
                at = datetime.fromtimestamp(place, UTC)
                moved = session.execute(
                    update(ProviderLease).where(ProviderLease.id == row_id)
                    .values(created_at=at, beat_at=now)
                ).rowcount
                if not moved:
                    session.add(ProviderLease(
                        id=row_id, provider=provider, holder=self.holder, created_at=at,
                        beat_at=now,
                    ))
            places = session.scalars(
                select(ProviderLease.created_at).where(
                    ProviderLease.provider == provider,
                    ProviderLease.id.like(QUEUE_PREFIX + "%"),
                    ProviderLease.id != row_id,
                    ProviderLease.released_at.is_(None),
                    ProviderLease.beat_at >= now - timedelta(seconds=QUEUE_STALE_SECONDS),
                )
            ).all()
        if not fresh:  # committed
            self._queued[provider] = (place, now)
        return sorted(_epoch(at) for at in places)

    # --- the process's heartbeat ---

    def beat(self) -> int:
        with self._sessions() as session:
            result = session.execute(
                update(ProviderLease)
                .where(ProviderLease.holder == self.holder, ProviderLease.released_at.is_(None))
                .values(beat_at=_now())
            )
            return int(result.rowcount or 0)

    def _ensure_beating(self) -> None:
        with self._beat_lock:
            self._reservations += 1
            if self._beating is not None and self._beating.is_alive():
                return
            self._stop.clear()
            # a thread, like Prefect's own lease renewal: a busy event loop must not make a
            # live process's slots look dead
            self._beating = threading.Thread(
                target=self._beat_loop, name="provider-lease-census", daemon=True
            )
            self._beating.start()

    def _beat_loop(self) -> None:
        """Beats while the process holds open rows; a beat that finds none, with no slot
        reserved since, ends the thread (an idle process writes nothing; the next
        `reserve` starts another)."""
        while not self._stop.wait(self.beat_seconds):
            with self._beat_lock:
                reservations = self._reservations
            try:
                beaten = self.beat()
            except Exception as exc:  # the next beat tries again; STALE_SECONDS is 8 beats
                log.warning("Could not beat the provider lease census (%s)", type(exc).__name__)
                continue
            if beaten == 0:
                with self._beat_lock:
                    if self._reservations == reservations:
                        self._beating = None
                        return

    def beating(self) -> bool:
        """Whether the heartbeat thread runs (a process holding no row writes nothing)."""
        with self._beat_lock:
            return self._beating is not None and self._beating.is_alive()

    def stop(self) -> None:
        self._stop.set()

    # --- what a reconcile reads ---

    def live(
        self, provider: str, *, at: datetime | None = None, exclude: str | None = None
    ) -> int:
        """Slots of `provider` the pipeline may hold at `at` (default now): rows of live
        processes not released, or released within RELEASED_GRACE_SECONDS; `exclude`
        is a row its caller knows the server does not count."""
        at = at or _now()
        with self._sessions() as session:
            return int(session.scalar(
                select(func.count()).select_from(ProviderLease).where(
                    ProviderLease.provider == provider,
                    ProviderLease.id != (exclude or ""),
                    ~ProviderLease.id.like(QUEUE_PREFIX + "%"),  # a place in line, no slot
                    ProviderLease.beat_at >= at - timedelta(seconds=STALE_SECONDS),
                    or_(
                        ProviderLease.released_at.is_(None),
                        ProviderLease.released_at
                        >= at - timedelta(seconds=RELEASED_GRACE_SECONDS),
                    ),
                )
            ) or 0)

    def purge(self, *, at: datetime | None = None) -> int:
        """Delete rows released or dead for longer than KEEP_SECONDS."""
        cutoff = (at or _now()) - timedelta(seconds=KEEP_SECONDS)
        with self._sessions() as session:
            result = session.execute(
                delete(ProviderLease).where(
                    or_(ProviderLease.released_at < cutoff, ProviderLease.beat_at < cutoff)
                )
            )
            return int(result.rowcount or 0)

    def rows(self, provider: str) -> Iterator[ProviderLease]:
        """Every row of a provider (tests and `studio server`'s status)."""
        with self._sessions() as session:
            yield from session.scalars(
                select(ProviderLease).where(ProviderLease.provider == provider)
            ).all()
