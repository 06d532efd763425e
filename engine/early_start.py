"""Calls started before Prefect has registered the runs that report them, and those runs
registered one after the other.

One of the workarounds in engine/ (listed in engine/WORKAROUNDS.md). Two costs of
Prefect's nested flow runs sit on a step's critical path:

- Registering a subflow is several Prefect API round trips before its body runs (its
  tracking task run in the parent, a look-up for an existing subflow run, the flow run,
  its Running state; prefect/flow_engine.py `create_flow_run`), one chunk after the
  other, 0.1-0.5 s each on a busy server. The work itself (a provider call) needs none
  of them. `started_early` starts each call at once, keyed by its caller; the task run
  that reports it `adopt`s the running call instead of starting it. Prefect's
  client-side orchestration covers task runs, not nested flow runs; no upstream issue
  asks for it (none filed found).
- Several subflows registered at once on a SQLite Prefect server collide on its write
  lock ("database is locked", answered 503 and retried after seconds):
  PrefectHQ/prefect#18934 (open; its reproduction is a flow with a subflow), also
  #10188. `staggered_starts` lets run N register once run N-1's body has begun (or
  after `START_WAIT_SECONDS`), while the runs before it already work.

The registries are per process and keyed by the caller (a batch, a staging root and a
piece id), so concurrent batches of one process never share an entry.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Hashable, Mapping
from typing import Any

#: calls started before their run, by the caller's key
_early: dict[Hashable, asyncio.Task[Any]] = {}
#: per group (a batch id), one event per run, set once that run's body began
_registered: dict[str, list[asyncio.Event]] = {}

#: the longest a run waits for the one before it to be registered
START_WAIT_SECONDS = 5.0

#: awaited by run N before it registers: returns once run N-1 began (or timed out)
StartGate = Callable[[int], Awaitable[None]]


@contextlib.asynccontextmanager
async def started_early(
    calls: Mapping[Hashable, Callable[[], Coroutine[Any, Any, Any]]],
) -> AsyncIterator[None]:
    """Start every call now; the run that reports one takes it with `adopt(key)`.

    A call already started under its key (an enclosing block) is left to that block.
    On exit the keys are forgotten and the calls this block started are awaited (a run
    that never started leaves its call to finish, not to be abandoned); their errors
    were the adopting runs' to report. Cancelling the block cancels its calls.
    """
    loop = asyncio.get_running_loop()
    started: list[asyncio.Task[Any]] = []
    for key, call in calls.items():
        if key not in _early:
            _early[key] = loop.create_task(call())
            started.append(_early[key])
    try:
        yield
    except asyncio.CancelledError:
        for task in started:
            task.cancel()
        raise
    finally:
        for key in calls:
            _early.pop(key, None)
        await asyncio.gather(*started, return_exceptions=True)


def adopt(key: Hashable) -> asyncio.Task[Any] | None:
    """The call started early under `key`, taken: a retry of its run starts afresh."""
    return _early.pop(key, None)


@contextlib.asynccontextmanager
async def staggered_starts(group: str, runs: int) -> AsyncIterator[StartGate]:
    """A gate for `runs` runs of `group`: run N waits until run N-1 `mark_registered`."""
    events = [asyncio.Event() for _ in range(runs)]
    _registered[group] = events

    async def gate(index: int) -> None:
        if index > 0:  # a run that never starts must not hold the others back for long
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(events[index - 1].wait(), START_WAIT_SECONDS)

    try:
        yield gate
    finally:
        _registered.pop(group, None)


def mark_registered(group: str, index: int) -> None:
    """Called first thing in run `index`'s body: Prefect has registered it."""
    events = _registered.get(group)
    if events is not None and index < len(events):
        events[index].set()
