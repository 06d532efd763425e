"""Wakes the processes waiting for a provider's slots the moment another gives one back.

One of the workarounds in engine/ (engine/WORKAROUNDS.md, with `provider_slots.py`):
Prefect's global concurrency limits tell nobody when a slot is released
(PrefectHQ/prefect#23183), so a process waiting for a slot another process frees asks
the server again every `poll_seconds` (0.2 s). Between processes that take turns (the
fleet's queue) that poll was the slot's hand-over: the ComfyUI emulator's GPUs stood free
~0.16 s before a prompt of another batch in a tenth of the hand-overs of three
concurrent 50-piece batches (`bench/bench_fleet.py --timeline`, "a GPU free before its
next prompt"), while a hand-over inside a process takes ~30 ms.

On a PostgreSQL studio database a pool that gives a slot back while other processes wait
says so (`NOTIFY studio_slots, '<provider>'`, through the census's own connection pool,
after the server has freed the slot), and each pool that waits listens on a connection
of its own: a notification ends its nap at once. The poll stays as the floor (a lost
notification, a listener still connecting, SQLite, which has no notifications).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import psycopg
from sqlalchemy import text

from studio.db.engine import get_engine

logger = logging.getLogger("studio.providers")

CHANNEL = "studio_slots"


def _listen_url() -> str | None:
    """The studio database's URL for psycopg, or None when it is not PostgreSQL."""
    url = get_engine().url
    if url.get_backend_name() != "postgresql":
        return None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def notify(provider: str, sender: str) -> None:
    """Tell the listening pools a slot of `provider` was given back by `sender` (a pool's
    `SlotWake.token`; a short transaction on a pooled connection: call it from a thread)."""
    engine = get_engine()
    if engine.url.get_backend_name() != "postgresql":
        return
    with engine.begin() as connection:
        connection.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": CHANNEL, "payload": f"{provider} {sender}"},
        )


class SlotWake:
    """One pool's ear for `studio_slots`: `nap` sleeps until a notification for its
    provider from another process, or its timeout."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        #: the mark on what this pool sends: its own notifications do not wake it
        self.token = uuid.uuid4().hex[:12]
        self._freed = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._warned = False
        self.woken = 0  # naps a notification ended (for the tests)

    def listen(self) -> None:
        """Start listening (once; nothing on SQLite). The first naps may still poll."""
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    def arm(self) -> None:
        """Forget notifications from before now: the next nap waits for a new one."""
        self._freed.clear()

    async def nap(self, seconds: float) -> None:
        """Until a notification since the last `arm`, or `seconds`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._freed.wait(), seconds)
            self.woken += 1

    async def _listen(self) -> None:
        try:
            url = await asyncio.to_thread(_listen_url)
            if url is None:
                return
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                async for note in conn.notifies():
                    provider, _, sender = note.payload.partition(" ")
                    if provider == self.provider and sender != self.token:
                        self._freed.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the poll serves as before
            if not self._warned:
                self._warned = True
                logger.warning(
                    "Could not listen for freed slots of provider:%s (%s): waiting processes "
                    "poll for them", self.provider, type(exc).__name__,
                )

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
            self._listener = None
