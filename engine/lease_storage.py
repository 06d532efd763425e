"""The lease storage of every Prefect server the project starts: Prefect's filesystem
storage, with one server's own concurrent index updates queued in memory.

WORKAROUND (the fix of PrefectHQ/prefect#22935; no issue filed found for its latency):
Prefect's filesystem lease storage keeps one file per lease and a shared expiration
index, and every lease created, renewed or revoked rewrites that index under a file lock
(`expirations.lock`, prefect/locking/_filelock.py) that a waiter polls every 0.1 s. Two
requests of the same server process that update the index together therefore wait a
poll for each other: ten concurrent `create_lease` calls take 0.91 s, one after another
0.006 s. Every slot of a provider's limit is a lease, so each process of a fleet that
asks for a slot or gives one back while another does (the hand-over between batches
that engine/provider_slots.py shares slots by) paid up to a poll per request.

Here the updates of one server process queue on an `asyncio.Lock` (per event loop)
before taking the file lock, so within the process they follow each other at once; the
file lock still guards the index against other processes that share the folder. Set by
`studio server` and the local server (engine/local_server.py, SERVER_SETTINGS) as
`PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=engine.lease_storage`; what is on disk is
Prefect's format, so a server switched back to
`prefect.server.concurrency.lease_storage.filesystem` keeps its leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncGenerator

from prefect.server.concurrency.lease_storage import filesystem

#: this process's index lock per event loop (a server runs one; tests may run several)
_queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _queue() -> asyncio.Lock:
    return _queues.setdefault(asyncio.get_running_loop(), asyncio.Lock())


class ConcurrencyLeaseStorage(filesystem.ConcurrencyLeaseStorage):
    """Prefect's filesystem storage; index writers of this process wait in memory."""

    @contextlib.asynccontextmanager
    async def _lock_expiration_index(self) -> AsyncGenerator[None, None]:
        async with _queue(), super()._lock_expiration_index():
            yield
