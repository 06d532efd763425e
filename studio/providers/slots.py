"""Concurrency slots around exactly the scarce provider call.

The chain only needs "hold a slot of provider X for the duration of this block", either
waiting for one or, for PROVIDER_STRATEGY=speed, only if one is free right now. The
default is a per-process asyncio semaphore per provider; the Prefect task layer passes
a factory backed by Prefect global concurrency limits so caps hold across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
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


class LocalSlots:
    """One asyncio.Semaphore per provider: caps within this process only."""

    def __init__(self, caps: Mapping[str, int]) -> None:
        self._semaphores = {name: asyncio.Semaphore(cap) for name, cap in caps.items()}

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
