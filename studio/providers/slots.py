"""Concurrency slots around exactly the scarce provider call.

The chain only needs "hold a slot of provider X for the duration of this block", either
waiting for one or, for PROVIDER_STRATEGY=speed, only if one is free right now. The
default is a per-process asyncio semaphore per provider; the Prefect task layer passes
a factory backed by Prefect global concurrency limits so caps hold across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Protocol


class SlotBusy(Exception):
    """No slot of this provider is free right now (raised only when not waiting)."""

    def __init__(self, provider: str) -> None:
        super().__init__(f"{provider}: no free slot")
        self.provider = provider


class SlotFactory(Protocol):
    def __call__(
        self, provider: str, *, wait: bool = True
    ) -> contextlib.AbstractAsyncContextManager[None]: ...

    async def wait_for_release(self, timeout: float) -> None:
        """Return when any slot may have been freed, or after `timeout` seconds."""
        ...

    def may_be_free(self, provider: str) -> bool:
        """False when a non-waiting slot request would surely be SlotBusy right now (a
        cheap local check the speed strategy makes before trying)."""
        ...


class ReleaseSignal:
    """Wakes ONE image waiting for "some slot was freed" per release (speed routing).

    One per release, first come first served, so a freed slot does not wake every
    waiting image to race for it. A release nobody waited for is remembered once, so
    an image that starts waiting just after it does not sleep through it.
    """

    def __init__(self) -> None:
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._missed = False

    def notify(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._missed = True

    async def wait(self, timeout: float) -> None:
        if self._missed:
            self._missed = False
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass


class LocalSlots:
    """One asyncio.Semaphore per provider: caps within this process only."""

    def __init__(self, caps: Mapping[str, int]) -> None:
        self._semaphores = {name: asyncio.Semaphore(cap) for name, cap in caps.items()}
        self._released = ReleaseSignal()

    async def wait_for_release(self, timeout: float) -> None:
        await self._released.wait(timeout)

    def may_be_free(self, provider: str) -> bool:
        semaphore = self._semaphores.get(provider)
        return semaphore is None or not semaphore.locked()

    @contextlib.asynccontextmanager
    async def __call__(self, provider: str, *, wait: bool = True) -> AsyncIterator[None]:
        semaphore = self._semaphores.get(provider)
        if semaphore is None:  # an uncapped provider (the offline preview)
            yield
            return
        if not wait and semaphore.locked():
            raise SlotBusy(provider)
        await semaphore.acquire()
        try:
            yield
        finally:
            semaphore.release()
            self._released.notify()
