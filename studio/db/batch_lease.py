"""One run works on a batch at a time.

Why: a crashed batch can be resumed from two places at once: the crash-recovery
automation and an operator's `studio batch resume` (or two operators). Two runs of one
batch would each plan the same unfinished pieces, and one would delete staged files the
other is about to upload. So a run takes the batch's lease before it reads what is left
to do, and a second run waits for it, then reads what the first one left.

On PostgreSQL the lease is a session-level advisory lock on a connection held for the
run: a process that dies (kill -9, a lost host) drops its connection and with it the
lease, so a resume never waits on a dead run. The session's TCP keepalives are short,
so a host that vanished without closing its socket is noticed in about half a minute
rather than the kernel's two hours. On SQLite (one host by design) it is an flock on
`$STUDIO_HOME/locks/<batch id>.lock`, which the kernel also drops with the process.

A process that is alive but frozen (SIGSTOP, a hung VM) keeps its lease: the waiting
run waits for it, up to its own timeout, and says so in its log.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, text

from studio.db.engine import get_engine
from studio.settings import get_settings

log = logging.getLogger("studio.batch")

#: first key of the two-key advisory lock space (the one-key space is the ledger's)
LEASE_LOCK_CLASS = 7_220_001
#: seconds between tries while another run holds the lease
POLL_SECONDS = 1.0
#: server-side keepalives of the lease connection: idle, interval, count (about 25 s)
KEEPALIVES = (10, 5, 3)


@dataclass(frozen=True)
class Lease:
    batch_id: str
    #: True when another run held the batch when this one asked: what is left to do
    #: must be read again, since that run may have finished it
    waited: bool


class _Holder(Protocol):
    def try_acquire(self) -> bool: ...

    def release(self) -> None: ...


class _AdvisoryLock:
    """pg_try_advisory_lock on a connection of its own, kept open while held."""

    def __init__(self, batch_id: str) -> None:
        self.batch_id = batch_id
        self.connection: Connection | None = None

    def try_acquire(self) -> bool:
        if self.connection is None:
            engine = get_engine().execution_options(isolation_level="AUTOCOMMIT")
            self.connection = engine.connect()
            idle, interval, count = KEEPALIVES
            self.connection.execute(text(
                f"SET tcp_keepalives_idle = {idle}; SET tcp_keepalives_interval = {interval};"
                f" SET tcp_keepalives_count = {count}"
            ))
        got = self.connection.execute(
            text("SELECT pg_try_advisory_lock(:cls, hashtext(:batch))"),
            {"cls": LEASE_LOCK_CLASS, "batch": self.batch_id},
        ).scalar()
        return bool(got)

    def release(self) -> None:
        if self.connection is None:
            return
        try:
            self.connection.execute(
                text("SELECT pg_advisory_unlock(:cls, hashtext(:batch))"),
                {"cls": LEASE_LOCK_CLASS, "batch": self.batch_id},
            )
        finally:
            # closed, not pooled: no later user of this connection inherits a lock
            self.connection.invalidate()
            self.connection.close()
            self.connection = None


class _FileLock:
    """flock on a file per batch under STUDIO_HOME (SQLite: one host)."""

    def __init__(self, batch_id: str) -> None:
        self.path: Path = get_settings().studio_home / "locks" / f"{batch_id}.lock"
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        if self.fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def _holder(batch_id: str) -> _Holder:
    if get_engine().dialect.name == "postgresql":
        return _AdvisoryLock(batch_id)
    return _FileLock(batch_id)


@asynccontextmanager
async def one_run_per_batch(batch_id: str) -> AsyncIterator[Lease]:
    """Hold `batch_id`'s lease for the block; wait (one log line) while another run has it."""
    holder = _holder(batch_id)
    waited = False
    try:
        while not await asyncio.to_thread(holder.try_acquire):
            if not waited:
                log.info(
                    "Batch waiting | Batch: %s | another run is working on this batch;"
                    " this run goes on when it ends",
                    batch_id,
                )
                waited = True
            await asyncio.sleep(POLL_SECONDS)
        yield Lease(batch_id=batch_id, waited=waited)
    finally:
        await asyncio.to_thread(holder.release)
