"""Provider concurrency slots held across every process, on Prefect global concurrency limits.

Each provider has one global concurrency limit, `provider:<name>` (created by
`studio limits apply`), so the spec's MAX_CONCURRENT caps hold however many workers
run batches. A slot is a Prefect *lease* on that limit: it counts against the cap on
the server until released. Leases are short and renewed: each lasts `LEASE_SECONDS`
(60 s, the shortest the server accepts) and is renewed by Prefect's own lease keeper
(`prefect.concurrency._leases.amaintain_concurrency_lease`, a thread) while this
process holds it, so a dead process's slots expire within 60 s plus the server's
repossessor loop (15 s by default).

One of the workarounds in engine/ (listed in engine/WORKAROUNDS.md): Prefect's own
`concurrency()` does not wake waiters of a limit when a slot is released, in this
process or another; they sleep the server's Retry-After (seconds, up to 30 s), so a freed
slot sits idle that long (PrefectHQ/prefect#23183, also #15618), and its acquisitions for
one limit are serialised per process. Here each process keeps a `LeasePool` per provider:

- a finished call hands its lease straight to the next image waiting in this process
  (no round trip, no lag);
- with no local waiter the lease lingers `linger_seconds` (short) for the next image of
  this process, then goes back to the server for other processes: under load a Prefect
  server answers an increment in seconds (SQLite lock retries), so giving a lease back
  between two images of the same batch would put that on the critical path;
- waiters the pool cannot serve from its own leases poll the server every
  `poll_seconds` (short, fixed) instead of the server's Retry-After.

Caps stay exact: every running call holds a lease the server counts, and the pool
never holds more leases than the cap; a lease whose renewal failed (the server lost or
expired it) is never handed on. If the limit does not exist the pool still caps this
process at the configured number and warns once.

Measured against Prefect's own `concurrency()` around each call, on a server whose
slot-wait bound (PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS) is 1 s:
`python bench/bench_images.py --scale S --slots pool|concurrency --slot-wait 1`, 50
pieces, image step wall time, median [range] of 3 runs on PostgreSQL:

- spec latencies (`--scale 1`): default order 70.8 s [70.5-71.0] with the pool, 71.5 s
  [71.3-71.9] with `concurrency()` (+1 %); speed routing 34.8 s [34.7-35.1] vs 29.8 s
  [28.3-31.8], on different routings (same-routing lower bound 32.0 s vs 24.8 s);
- `--scale 0.25` (calls a quarter as long, the Retry-After sleep not): default 19.5 s
  [18.9-19.9] vs 22.7 s [21.4-23.9] (+16 %; with a 0.5 s bound 21.9 s [19.1-22.0]);
  speed 9.8 s [9.2-9.9] vs 10.1 s [9.6-12.8];
- the linger (`PROVIDER_SLOT_LINGER_SECONDS=0` to switch it off, `--scale 0.25`): on
  PostgreSQL it changes nothing (default 18.6 s without, speed 10.0 s); on SQLite
  (`--prefect-db sqlite`, the local server's database, 2 runs) speed routing takes
  12.0 s [11.6-12.3] with it and 19.8 s [19.0-20.5] without (a lingering lease is
  tried with no round trip), while the default order takes 24.3 s with it, 20.3 s
  without.

The bench runs one process, so the polling of slots other processes free is not
measured by it.

Between processes (several batches, one worker process each) the pool no longer keeps
its leases to itself: with a census, the processes waiting for one limit take turns
through a queue row each in the studio database (see "the fleet's queue" below). Three
concurrent 50-piece batches on one worker (`bench/bench_fleet.py`, 3 rounds each, a
shared 2-core machine at load 12-18): the longest batch run ([BATCH START] to finish)
43 % [34-60] longer than the shortest before (the batch that got its slots first kept
them), 8 % [6-9] after; the price is the leases passed between processes through the
server (a release, then an increment): ComfyUI slots busy during the image phase
75-90 % before, 72-82 % after.

A process that gives a lease back while others wait announces it on a PostgreSQL studio
database, after the server has the slot, and the waiting pools listen
(engine/slot_wake.py): the next in line asks at once instead of at its next poll.

A batch also claims its first image provider as its flow run starts (`claim`, for
`PROVIDER_SLOT_CLAIM_SECONDS`): a place in the queue after every ask, so the processes
already asking keep to their share until it asks, and its first ask stands in line from
the claim's time. Without it the first batch of a wave took every slot a moment before
the others asked. `bench/bench_fleet.py`, 3 rounds each, claims vs `--claim-seconds 0`:
6 x 10 first-wave finish spread 14 % [11-22] vs 109 % [30-139], wall / bound 1.48
[1.43-1.63] vs 1.30 [1.22-1.33] (the next wave starts together when this one ends,
instead of one by one; workers polling every 0.5 s); at stop 28, 3 x 50 spread 5 % [4-8]
vs 14 % [12-17], wall / bound 1.19 vs 1.18. With forks that start faster (the warm
process's frozen heap), 6 x 10: spread 15 % [10-38] vs 38 % [30-57], wall / bound 1.34
[1.25-1.39] vs 1.24 [1.20-1.29]: a batch whose flow starts after the first one's ask has
not claimed yet and is not waited for.

With a `LeaseCensus` (engine/lease_census.py) every slot is also written to
the studio database before it is asked for and stamped after it went back, and a pool
whose waiters the server keeps refusing runs `heal` (engine/slot_reconcile.py): slots the
server counts beyond the census are slots no live process holds (a server that lost its
leases in a restart), and are freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.concurrency._leases import amaintain_concurrency_lease
from prefect.context import AsyncClientContext
from prefect.settings import PREFECT_API_URL

from engine import slot_wake
from engine.lease_census import QUEUE_STALE_SECONDS, LeaseCensus
from studio.providers.entry import limit_name
from studio.providers.slots import ReleaseSignal, SlotBusy

logger = logging.getLogger("studio.providers")

#: a slot's lease: the shortest the Prefect server accepts (it refuses under 60 s)
LEASE_SECONDS = 60.0
#: Prefect's keeper (`amaintain_concurrency_lease`: a thread and a sync API client per
#: lease since PrefectHQ/prefect#21925) renews a lease the moment it starts, then every
#: 75 % of its duration; a lease just granted for LEASE_SECONDS needs no renewal yet,
#: and most are handed back within seconds (an image call). The keeper starts once a
#: lease has been held this fraction of its duration: a short lease costs no thread, no
#: client, no renewal (a 10-piece batch: ~10 renewals and their clients fewer), and a long
#: one is first renewed with three quarters of its time left.
KEEPER_DELAY_FRACTION = 0.25
#: a waiter refused this long asks `heal` to free slots no live process holds
HEAL_AFTER_SECONDS = 10.0
#: how often a pool with waiting images publishes its place in the fleet's queue and
#: reads the others' (at least its poll interval)
QUEUE_SECONDS = 0.25
#: a batch about to ask for a provider's slots says so in the fleet's queue (`claim`) for
#: at most this long: the processes already served keep to their share of the cap until
#: it asks, so the batch that asked first does not take every slot a moment before the
#: others of its wave ask (6 x 10 on one worker: the first batch of a wave took all ten).
#: A flow run claims as it starts; its first image asks 1-2 s later on a busy machine
CLAIM_SECONDS = 5.0
#: the place a claim takes in the queue: after every ask (epoch seconds, year 3000)
CLAIM_PLACE = 32503680000.0

#: frees slots of a provider's limit that no live lease holds, not counting the caller's
#: own census row (the slot it is asking for); returns how many it freed
Heal = Callable[[str, str | None], Awaitable[int]]
#: the fleet's limit in force for a provider as this process knows it (None: unknown)
LimitInForce = Callable[[str], int | None]


@dataclass(eq=False)
class Lease:
    lease_id: UUID | None  # None: the global limit does not exist, only the local cap holds
    census_id: str | None = None
    #: set when Prefect's keeper could not renew it: the server may no longer count it
    lost: bool = False
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _keeper: asyncio.Task[None] | None = None


class LeasePool:
    """Leases on one provider's global limit, shared by the image tasks of one event loop."""

    def __init__(
        self,
        provider: str,
        cap: int,
        *,
        lease_seconds: float = LEASE_SECONDS,
        poll_seconds: float = 0.2,
        linger_seconds: float = 1.0,
        released: ReleaseSignal | None = None,
        api: ApiClients | None = None,
        census: LeaseCensus | None = None,
        heal: Heal | None = None,
        heal_after_seconds: float = HEAL_AFTER_SECONDS,
        queue_seconds: float = QUEUE_SECONDS,
        limit_in_force: LimitInForce | None = None,
        asks_in_flight: int = 1,
    ) -> None:
        self.provider = provider
        self.asks_in_flight = max(1, asks_in_flight)
        self.limit_in_force = limit_in_force
        self._owns_api = api is None
        self._api = api or ApiClients()
        self.linger_seconds = linger_seconds
        self._released = released or ReleaseSignal()
        self.name = limit_name(provider)
        self.cap = cap
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.census = census
        self.heal = heal
        self.heal_after_seconds = heal_after_seconds
        self.held = 0
        self._pending = 0  # increments on the wire
        #: (asked at, epoch seconds; the waiter), first come first
        self._waiters: deque[tuple[float, asyncio.Future[Lease]]] = deque()
        self._idle: list[Lease] = []  # lingering leases, newest last
        self._acquirer: asyncio.Task[None] | None = None
        self._wire = asyncio.Semaphore(self.asks_in_flight)
        self._background: set[asyncio.Task[None]] = set()
        self._missing_warned = False
        self._census_warned = False
        # the fleet's queue (with a census): this process's place and the others'
        self.queue_seconds = max(queue_seconds, poll_seconds)
        self._served_at = 0.0  # epoch seconds a local waiter last got a slot
        self._foreign: list[float] = []  # places of other processes waiting, oldest first
        self._foreign_at = 0.0  # monotonic time of that view
        self._gifts = 0  # leases given back for others since that view
        self._queue_task: asyncio.Task[None] | None = None
        self._queue_wake = asyncio.Event()
        #: set once the running queue loop has read the others' places (its first look)
        self._viewed = asyncio.Event()
        self._queue_warned = False
        #: with a census (several processes): woken when another process gives a slot
        #: back, instead of only polling (engine/slot_wake.py)
        self._wake = slot_wake.SlotWake(provider) if census is not None else None
        self._claimed_until = 0.0  # monotonic end of this process's claim (`claim`)
        self._claimed_at = 0.0  # epoch seconds of that claim: its first ask's place in line
        #: counters for the tests
        self.server_grants = 0
        self.handoffs = 0
        self.healed = 0
        self.given_way = 0  # leases given back because another process waited longer

    # --- public ---

    @contextlib.asynccontextmanager
    async def slot(self, *, wait: bool = True) -> AsyncIterator[None]:
        lease = await (self.acquire() if wait else self.try_acquire())
        try:
            yield
        finally:
            self.release(lease)

    def may_be_free(self) -> bool:
        """What try_acquire checks before asking the server (no round trip)."""
        if self._idle:
            return True
        if self._others_first():
            return False
        return not self._live_waiters() and self.held + self._pending < self.cap

    async def try_acquire(self) -> Lease:
        """A lease only if one is free right now (one round trip at most), else SlotBusy.

        A try is the claimant's ask (speed routing): its claim has served, and kept on it
        would hold the others to their share for its whole time for nobody."""
        self.unclaim()
        if (lease := self._take_idle()) is not None:
            return lease
        if self._live_waiters() or self.held + self._pending >= self.cap:
            raise SlotBusy(self.provider)
        if self._others_first():  # other processes wait for this provider: not our turn
            raise SlotBusy(self.provider)
        lease = await self._increment()
        if lease is None:
            raise SlotBusy(self.provider)
        return lease

    def claim(self, seconds: float = CLAIM_SECONDS) -> None:
        """Say in the fleet's queue that this process will ask for slots within `seconds`
        (a batch's start, before its first image): the others hold to their share of the
        cap until it asks or the claim ends, and its first ask stands in line from the
        claim's time. Nothing without a census (one process)."""
        if self.census is None:
            return
        self._claimed_until = time.monotonic() + seconds
        self._claimed_at = time.time()
        self._ensure_queue()

    def unclaim(self) -> None:
        """The claim ends before its time (a batch refused, or ended before its images):
        its queue row goes at the next look."""
        if self._claimed_until:
            self._claimed_until = 0.0
            self._queue_wake.set()

    async def acquire(self) -> Lease:
        # asking: the claim has served, and its first ask stands in line where it claimed
        claimed = self._claimed_until > time.monotonic()
        self._claimed_until = 0.0
        if not self._live_waiters() and (lease := self._take_idle()) is not None:
            return lease
        future: asyncio.Future[Lease] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._claimed_at if claimed else time.time(), future))
        if claimed:  # the others learn our place in line now, not at the next look
            self._queue_wake.set()
        self._ensure_queue()
        self._ensure_acquirer()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(future.result())  # granted just as we were cancelled
            raise

    def release(self, lease: Lease) -> None:
        """Hand the lease to the next local waiter, or let it linger, else return it.

        A lost lease (its renewal failed) goes back: the server may have freed its slot
        already, so handing it on could pass the cap. So does a lease another process
        waited longer for (`_give_way`), and a lease nobody here waits for while other
        processes wait (no linger then)."""
        if not lease.lost and not self._lowered() and not self._give_way():
            while self._waiters:
                _, waiter = self._waiters.popleft()
                if not waiter.done():
                    self.handoffs += 1
                    self._served()
                    waiter.set_result(lease)
                    return
            if self.linger_seconds > 0 and not self._view():
                self._idle.append(lease)
                self._spawn(self._expire_idle(lease))
                self._ensure_queue()  # a process that asks meanwhile gets it at once
                self._released.notify()
                return
        self._give_back(lease)

    def _lowered(self) -> bool:
        """Whether the fleet lowered this provider's limit below the configured cap
        (engine/provider_pace.py): then every lease goes back to the server, the only
        place that holds the fleet to the lowered number; a lease handed on here would
        keep the old number in flight for as long as this process has waiters."""
        if self.limit_in_force is None:
            return False
        limit = self.limit_in_force(self.provider)
        return limit is not None and limit < self.cap

    def _give_back(self, lease: Lease) -> None:
        self.held -= 1
        lease._stop.set()
        if lease.lease_id is not None or lease.census_id is not None:
            # other processes wait: they hear of it once the server has the slot
            self._spawn(self._release_on_server(lease, tell=bool(self._view())))
        self._ensure_acquirer()
        self._released.notify()

    def _take_idle(self) -> Lease | None:
        while self._idle:
            lease = self._idle.pop()
            if not lease.lost:
                self.handoffs += 1
                return lease
            self._give_back(lease)
        return None

    async def _expire_idle(self, lease: Lease) -> None:
        await asyncio.sleep(self.linger_seconds)
        if any(idle is lease for idle in self._idle):
            self._idle = [idle for idle in self._idle if idle is not lease]
            self._give_back(lease)

    # --- internals ---

    def _live_waiters(self) -> int:
        return sum(1 for _, w in self._waiters if not w.done())

    # --- the fleet's queue: first come, first served across processes ---
    #
    # Each process with waiting images has a place in line: when its oldest waiting image
    # asked, or when it was last served, whichever is later (so a process served goes to
    # the back, and processes waiting together take turns). Every `queue_seconds` (and
    # right after it is served while others wait) it publishes its place and reads the
    # others' (LeaseCensus.queue, one transaction). With that view:
    # - a process holding more than an equal share of the cap (cap // processes waiting)
    #   gives a released lease back to the server instead of to its own next image when
    #   another process is ahead in line, at most one per process ahead per view;
    # - a process holding its equal share or more does not take a slot the server frees
    #   while another process is ahead: that one takes it (the first in line always may);
    # - a lease nobody here waits for goes straight back while others wait (no linger).
    # Below its share a process takes free slots at once, so the cap fills as fast as
    # before; the cap stays exact (only who gets a lease changes). A process whose row
    # is not beaten for QUEUE_STALE_SECONDS is no longer given way to.

    def _head(self) -> float | None:
        """When this process's oldest waiting image asked (epoch s), or None."""
        for asked, waiter in self._waiters:
            if not waiter.done():
                return asked
        return None

    def _place(self) -> float | None:
        head = self._head()
        if head is None:
            return CLAIM_PLACE if time.monotonic() < self._claimed_until else None
        return max(head, self._served_at)

    def _view(self) -> list[float]:
        """Places of the other processes waiting now (empty when unknown or stale)."""
        if self._foreign and time.monotonic() - self._foreign_at <= QUEUE_STALE_SECONDS:
            return self._foreign
        return []

    def _ahead(self) -> int:
        """Other processes asking ahead of this one in line (all that ask if nothing
        waits here; a claim is never ahead)."""
        asking, place = [p for p in self._view() if p < CLAIM_PLACE], self._place()
        if place is None or place >= CLAIM_PLACE:
            return len(asking)
        return sum(1 for p in asking if p < place)

    def _claims(self) -> int:
        """Other processes that claimed slots and have not asked yet."""
        return sum(1 for p in self._view() if p >= CLAIM_PLACE)

    def _share(self) -> int:
        """An equal share of the cap among the processes waiting, rounded down: 0 when
        more processes wait than there are slots (each then gives way after one image,
        and only the first in line takes a freed slot)."""
        return self.cap // (1 + len(self._view()))

    def _give_way(self) -> bool:
        """Whether a lease released now goes back to the server for a process ahead."""
        if not self._live_waiters() or self.held <= self._share():
            return False
        if self._ahead() > self._gifts:
            self._gifts += 1
            self.given_way += 1
            return True
        return False

    def _others_first(self, *, claims: bool = False) -> bool:
        """Whether a free slot on the server is another process's to take, not ours;
        with `claims`, also a slot kept for a process that claimed and will ask soon (the
        waiting path only: speed routing goes on to the next provider instead, and a
        claim should not send images to a dearer provider)."""
        if not self._view() or self.held + self._pending < self._share():
            return False
        return self._ahead() > 0 or (claims and self._claims() > 0)

    def _served(self) -> None:
        self._served_at = time.time()
        if self._view():  # the others should know at once that we went to the back
            self._queue_wake.set()

    def _ensure_queue(self) -> None:
        if self.census is None or not (self._queue_task is None or self._queue_task.done()):
            return
        self._queue_task = asyncio.get_running_loop().create_task(
            self._queue_loop(), context=_detached_context()
        )

    async def _queue_loop(self) -> None:
        """Publish this process's place while it waits, read the others'; then leave.

        It also reads them while a lease lingers here with nothing waiting (no place, no
        row): a process that asks or claims meanwhile gets the lease back within a look,
        not when the linger ends. The view of a process that stopped waiting is its last
        one, from before the others of a wave asked, so a lease it released lingered a
        whole second while they waited (issue 20: the second wave of six 10-piece
        batches stood idle that long)."""
        assert self.census is not None
        try:
            await self._queue_turns()
        finally:
            if self._wake is not None:
                await self._wake.aclose()

    async def _queue_turns(self) -> None:
        assert self.census is not None
        while True:
            place = self._place()
            if place is not None and self._wake is not None:
                self._wake.listen()  # once; waiting, a slot given back ends the nap
            try:
                foreign = await asyncio.to_thread(self.census.queue, self.provider, place)
            except Exception as exc:  # no view: the pool serves this process as before
                if not self._queue_warned:
                    self._queue_warned = True
                    logger.warning(
                        "Could not reach the slot queue of %s (%s): slots are not shared "
                        "in turn with other processes", self.name, type(exc).__name__,
                    )
                foreign = []
            self._foreign, self._foreign_at, self._gifts = foreign, time.monotonic(), 0
            self._viewed.set()
            if foreign:
                self._return_idle()
            if place is None and self._place() is None and not self._idle:
                self._viewed.clear()
                return  # nothing waits or lingers here: the row is gone
            self._ensure_acquirer()
            self._queue_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue_wake.wait(), self.queue_seconds)

    def _return_idle(self) -> None:
        idle, self._idle = self._idle, []
        for lease in idle:
            self._give_back(lease)

    def _ensure_acquirer(self) -> None:
        idle = self._acquirer is None or self._acquirer.done()
        if idle and self._live_waiters() and self.held + self._pending < self.cap:
            self._acquirer = asyncio.get_running_loop().create_task(
                self._acquire_loop(), context=_detached_context()
            )

    async def _acquire_loop(self) -> None:
        """Get leases from the server for local waiters, polling briefly while it is full."""
        refused_since: float | None = None
        healed_at = 0.0
        # one census row for the slot being asked for, kept across refusals (a row per
        # poll would write the database several times a second while the limit is full)
        asking: str | None = None
        if self._queue_task is not None and not self._queue_task.done():
            # the first look at the queue before the first ask (one database read): a
            # share taken before it would not count the processes already waiting
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._viewed.wait(), self.queue_seconds)
        try:
            while (due := self._asks_due()) > 0:
                if self._wake is not None:
                    self._wake.arm()  # a slot given back from now on ends the nap
                if self._others_first(claims=True):  # not our turn: the process ahead
                    # takes it, or one that claimed will
                    refused_since = None
                    await self._nap()
                    continue
                if self.census is not None and asking is None:
                    asking = await self._census_reserve()
                # each lease goes to a waiter as soon as it is granted (`_ask`); the
                # first ask carries the row kept across refusals, the others their own
                outcomes = await asyncio.gather(
                    self._ask(asking), *(self._ask(None) for _ in range(due - 1))
                )
                first = outcomes[0]
                if first is not None:  # granted (the lease's row now) or failed (let go)
                    asking = None
                if any(isinstance(outcome, Lease) for outcome in outcomes):
                    refused_since = None
                    continue
                now = time.monotonic()
                refused_since = refused_since or now
                if self._heal_due(refused_since, healed_at, now):
                    healed_at = now
                    await self._heal(asking)
                await self._nap()
        finally:
            if asking is not None:  # never sent, or refused: the server never counted it
                self._spawn(self._census_forget(asking))

    def _asks_due(self) -> int:
        """How many increments to send at once: one per waiter the cap has room for, up
        to `asks_in_flight`; while other processes wait, no more than this process's
        share leaves room for (one at a time past it, each after the turn check)."""
        room = self.cap - self.held - self._pending
        due = min(self._live_waiters(), room, self.asks_in_flight)
        if due > 1 and self._view():
            due = max(1, min(due, self._share() - self.held - self._pending))
        return due

    async def _ask(self, asking: str | None) -> Lease | Exception | None:
        """One increment for the next waiter: the lease (already handed on), the error
        (logged; the server may have counted it, `_increment` let it go) or None (the
        limit is full)."""
        try:
            lease = await self._increment(asking)
        except Exception as exc:
            response = getattr(exc, "response", None)  # an HTTP error: its status says why
            status = f" {response.status_code}" if response is not None else ""
            logger.warning(
                "Could not reach the Prefect API for %s (%s%s); retrying",
                self.name, type(exc).__name__, status,
            )
            return exc
        if lease is not None:
            self._grant(lease)
        return lease

    async def _nap(self) -> None:
        """Until the next poll, or until another process gives a slot back."""
        if self._wake is None:
            await asyncio.sleep(self.poll_seconds)
        else:
            await self._wake.nap(self.poll_seconds)

    def _heal_due(self, refused_since: float, healed_at: float, now: float) -> bool:
        return (
            self.heal is not None
            and now - refused_since >= self.heal_after_seconds
            and now - healed_at >= self.heal_after_seconds
        )

    async def _heal(self, asking: str | None) -> None:
        """Free slots the server counts beyond the census (our own asking row aside: its
        last increment was refused and no other of this loop is on the wire)."""
        assert self.heal is not None
        try:
            self.healed += await self.heal(self.provider, asking)
        except Exception as exc:  # healing is best effort; the next round tries
            logger.warning(
                "Slot reconcile of %s failed (%s: %s)", self.name, type(exc).__name__, exc
            )

    def _grant(self, lease: Lease) -> None:
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                self._served()
                waiter.set_result(lease)
                return
        self.release(lease)  # nobody wants it any more

    async def _increment(self, asking: str | None = None) -> Lease | None:
        """One increment-with-lease call: a lease, or None when the limit is full (423).

        `asking` is the census row of the caller's slot request (the acquire loop keeps
        one across refusals); without one a row is written here, before the server can
        count the slot. On a refusal a row made here is deleted (the server counted
        nothing); on an error it is released (the server may have counted it)."""
        self._pending += 1
        census_id = asking
        granted = refused = False
        try:
            if self.census is not None and census_id is None:
                census_id = await self._census_reserve()
            # at most `asks_in_flight` increments of this limit on the wire (the speed
            # strategy's try_acquire goes through here too): concurrent increments of one
            # limit wait on each other on the server (a lock on the limit's row; seconds
            # of lock retries with SQLite), so only a PostgreSQL server gains from more
            async with self._wire, self._api.client() as client:
                response = await client.increment_concurrency_slots_with_lease(
                    names=[self.name], slots=1, mode="concurrency",
                    lease_duration=self.lease_seconds,
                )
            granted = True
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 423:
                refused = True
                return None
            raise
        finally:
            self._pending -= 1
            if census_id is not None and not granted:
                if not refused:
                    self._spawn(self._census_released(census_id))
                elif asking is None:
                    self._spawn(self._census_forget(census_id))
        body = response.json()
        self.held += 1
        self.server_grants += 1
        if not body.get("limits"):
            if not self._missing_warned:
                self._missing_warned = True
                logger.warning(
                    "Concurrency limit %s does not exist: capping this process only at %d "
                    "(run `studio limits apply`)", self.name, self.cap,
                )
            lease = Lease(None, census_id)
        else:
            lease = Lease(UUID(body["lease_id"]), census_id)
            lease._keeper = asyncio.get_running_loop().create_task(
                self._keep(lease), context=_detached_context()
            )
        if census_id is not None:
            self._spawn(self._census_granted(lease))
        return lease

    async def _keep(self, lease: Lease) -> None:
        """Renew the lease with Prefect's keeper until it goes back; mark it lost if the
        keeper gives up (it cancels this task when renewal fails)."""
        assert lease.lease_id is not None
        try:  # given back before it needs renewing: no keeper at all
            await asyncio.wait_for(
                lease._stop.wait(), self.lease_seconds * KEEPER_DELAY_FRACTION
            )
            return
        except TimeoutError:
            pass
        try:
            async with amaintain_concurrency_lease(
                lease.lease_id, self.lease_seconds, raise_on_lease_renewal_failure=True
            ):
                await lease._stop.wait()
        except asyncio.CancelledError:
            if not lease._stop.is_set():
                lease.lost = True
                logger.warning(
                    "Lease on %s could not be renewed; it is given back after its call",
                    self.name,
                )

    async def _release_on_server(self, lease: Lease, *, tell: bool = False) -> None:
        released = False
        if lease.lease_id is not None:
            try:
                async with self._api.client() as client:
                    await client.release_concurrency_slots_with_lease(lease_id=lease.lease_id)
                released = True
            except Exception:  # the lease expires on its own; never fail an image for this
                logger.warning("Could not release lease on %s; it will expire", self.name)
        if lease.census_id is not None:
            await self._census_released(lease.census_id)
        # the bookkeeping first: a process ending (its loop cancels what is left) must
        # not lose a census stamp to a courtesy
        if tell and released and self._wake is not None:
            with contextlib.suppress(Exception):  # the waiters' poll still finds it
                await asyncio.to_thread(slot_wake.notify, self.provider, self._wake.token)

    async def _census_reserve(self) -> str | None:
        """A census row for a slot about to be asked for; None if the database is away.

        Without its row the slot is invisible to the reconcile, which could then free it
        while its call runs: only while this process cannot reach the database that every
        batch needs anyway, and said in the log. Blocking images on it would be worse."""
        assert self.census is not None
        try:
            return await asyncio.to_thread(self.census.reserve, self.provider)
        except Exception as exc:
            if not self._census_warned:
                self._census_warned = True
                logger.warning(
                    "Could not write the lease census for %s (%s): its slots are not "
                    "protected from the slot reconcile", self.name, type(exc).__name__,
                )
            return None

    async def _census_granted(self, lease: Lease) -> None:
        assert self.census is not None and lease.census_id is not None
        lease_id = str(lease.lease_id) if lease.lease_id else None
        try:
            await asyncio.to_thread(self.census.granted, lease.census_id, lease_id)
        except Exception as exc:  # the row stays counted as asked for: still live
            logger.warning("Could not record a lease on %s (%s)", self.name, type(exc).__name__)

    async def _census_forget(self, census_id: str) -> None:
        assert self.census is not None
        with contextlib.suppress(Exception):  # a left row only makes the reconcile cautious
            await asyncio.to_thread(self.census.forget, census_id)

    async def _census_released(self, census_id: str) -> None:
        assert self.census is not None
        try:
            await asyncio.to_thread(self.census.released, census_id)
        except Exception as exc:  # the row goes stale with the process: never over-freed
            logger.warning(
                "Could not record a released lease on %s (%s)", self.name, type(exc).__name__
            )

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coro, context=_detached_context())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def release_idle(self) -> None:
        """Give every lingering lease back now and wait until the server has them.

        Called when a unit of work ends (an image chunk): a process that exits right
        after must not leave leases behind, which would hold slots until they expire.
        """
        idle, self._idle = self._idle, []
        releases = []
        for lease in idle:
            self.held -= 1
            lease._stop.set()
            releases.append(self._release_on_server(lease, tell=bool(self._view())))
        await asyncio.gather(*releases)
        self._ensure_acquirer()

    async def drain(self) -> None:
        """Wait for background releases (tests and short-lived processes call this)."""
        if self._queue_task is not None:
            await asyncio.gather(self._queue_task, return_exceptions=True)
        while self._background:
            await asyncio.gather(*tuple(self._background), return_exceptions=True)
        if self._owns_api:
            await self._api.aclose()


class ApiClients:
    """One Prefect API client per event loop and API URL for a pool's lease calls.

    `get_client()` outside a run builds a new client each time, which costs ~20 ms of
    CPU (its TLS context) before the request even leaves: ten slots asked for at the
    start of a step queued 200 ms of that in front of the first provider call. The
    client is detached from any run (it outlives runs) and closed by `aclose`.
    """

    def __init__(self) -> None:
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[str, asyncio.Task[PrefectClient]]
        ] = weakref.WeakKeyDictionary()
        self._closing: set[asyncio.Task[None]] = set()
        #: clients whose first request has been answered (their CSRF token is fetched)
        self._primed: weakref.WeakSet[PrefectClient] = weakref.WeakSet()
        self._priming: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    @contextlib.asynccontextmanager
    async def client(self) -> AsyncIterator[PrefectClient]:
        """The loop's client; a new client's first request goes alone.

        Prefect's client fetches a CSRF token before its first change request, and the
        server keeps one token per client: requests that start together on a new client
        each fetch one, each fetch voids the others', and their 403s are retried after
        2, 4, 8 s (an increment took 13 s with four sent at once on a fresh client). The
        first request holds the others until it is answered; then they share its token."""
        loop = asyncio.get_running_loop()
        url = str(PREFECT_API_URL.value())
        cached = self._clients.get(loop)
        broken = cached is not None and cached[1].done() and (
            cached[1].cancelled() or cached[1].exception() is not None
        )
        if cached is None or cached[0] != url or broken:  # first use, or settings changed
            if cached is not None:
                self._close_later(cached[1])
            opening = loop.create_task(_open_client(), context=_detached_context())
            cached = self._clients[loop] = (url, opening)
        client = await asyncio.shield(cached[1])
        if client not in self._primed:
            priming = self._priming.setdefault(loop, asyncio.Lock())
            await priming.acquire()
            if client in self._primed:  # primed while this one waited: no need to queue
                priming.release()
            else:
                try:
                    yield client
                except httpx.HTTPStatusError:  # answered: the token was fetched
                    self._primed.add(client)
                    raise
                else:
                    self._primed.add(client)
                finally:
                    priming.release()
                return
        yield client

    def _close_later(self, opening: asyncio.Task[PrefectClient]) -> None:
        async def close() -> None:
            with contextlib.suppress(Exception):
                await (await opening).__aexit__(None, None, None)

        task = asyncio.get_running_loop().create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        cached = self._clients.pop(asyncio.get_running_loop(), None)
        if cached is not None:
            self._close_later(cached[1])
        await asyncio.gather(*tuple(self._closing), return_exceptions=True)


async def _open_client() -> PrefectClient:
    client = get_client()
    await client.__aenter__()
    return client


def _detached_context() -> contextvars.Context:
    """The current context without the run's API client.

    Background work of a pool (acquiring for waiters, releasing a lingering lease) can
    outlive the flow run that started it, whose client is closed when the run ends;
    with the client context cleared, `get_client()` opens its own (same settings).
    """
    context = contextvars.copy_context()
    context.run(AsyncClientContext.__var__.set, None)
    return context


class PrefectSlots:
    """The chain's slot factory backed by one `LeasePool` per provider and event loop."""

    def __init__(
        self,
        caps: Mapping[str, int],
        *,
        poll_seconds: float = 0.2,
        linger_seconds: float = 1.0,
        census: LeaseCensus | None = None,
        heal: Heal | None = None,
        limit_in_force: LimitInForce | None = None,
        claim_seconds: float = CLAIM_SECONDS,
        asks_in_flight: int = 1,
    ) -> None:
        self.caps = dict(caps)
        self.asks_in_flight = asks_in_flight
        self.claim_seconds = claim_seconds
        self.limit_in_force = limit_in_force
        self.linger_seconds = linger_seconds
        self.poll_seconds = poll_seconds
        self.census = census
        self.heal = heal
        self._api = ApiClients()
        self._pools: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, LeasePool]
        ] = weakref.WeakKeyDictionary()
        self._signals: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, ReleaseSignal
        ] = weakref.WeakKeyDictionary()

    def _signal(self) -> ReleaseSignal:
        return self._signals.setdefault(asyncio.get_running_loop(), ReleaseSignal())

    async def wait_for_release(self, timeout: float) -> None:
        """Any pool of this loop freed a slot, or `timeout` passed (other processes)."""
        await self._signal().wait(timeout)

    def may_be_free(self, provider: str) -> bool:
        pool = self.pool(provider)
        return pool is None or pool.may_be_free()

    def pool(self, provider: str) -> LeasePool | None:
        if provider not in self.caps:
            return None
        pools = self._pools.setdefault(asyncio.get_running_loop(), {})
        if provider not in pools:
            pools[provider] = LeasePool(
                provider, self.caps[provider], poll_seconds=self.poll_seconds,
                linger_seconds=self.linger_seconds, released=self._signal(),
                api=self._api, census=self.census, heal=self.heal,
                limit_in_force=self.limit_in_force, asks_in_flight=self.asks_in_flight,
            )
        return pools[provider]

    @contextlib.asynccontextmanager
    async def __call__(self, provider: str, *, wait: bool = True) -> AsyncIterator[None]:
        pool = self.pool(provider)
        if pool is None:  # uncapped (the offline preview)
            yield
            return
        async with pool.slot(wait=wait):
            yield

    async def release_idle(self) -> None:
        pools = self._pools.get(asyncio.get_running_loop(), {})
        await asyncio.gather(*(pool.release_idle() for pool in pools.values()))

    async def drain(self) -> None:
        """Wait for background lease work, then close this loop's API client."""
        pools = self._pools.get(asyncio.get_running_loop(), {})
        for pool in pools.values():
            await pool.drain()
        await self._api.aclose()
