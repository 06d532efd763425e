"""engine/early_start.py on its own: adoption, clean-up, and the registration gate."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine import early_start
from engine.early_start import adopt, mark_registered, staggered_starts, started_early


async def test_a_call_is_adopted_once_and_the_block_forgets_its_keys() -> None:
    calls: list[str] = []

    async def call(name: str) -> str:
        calls.append(name)
        return name

    async with started_early({"a": lambda: call("a"), "b": lambda: call("b")}):
        task = adopt("a")
        assert task is not None and await task == "a"
        assert adopt("a") is None  # a retry of its run starts afresh
    assert calls == ["a", "b"]  # the unadopted call ran to its end, awaited by the block
    assert not early_start._early


async def test_a_key_already_started_is_left_to_the_block_that_started_it() -> None:
    started = 0

    async def call() -> None:
        nonlocal started
        started += 1

    async with started_early({"k": call}), started_early({"k": call}):
        pass
    assert started == 1


async def test_the_gate_waits_for_the_run_before_and_not_for_ever(monkeypatch) -> None:
    monkeypatch.setattr(early_start, "START_WAIT_SECONDS", 0.2)
    async with staggered_starts("batch", 3) as gate:
        await gate(0)  # the first run never waits
        waiting = asyncio.ensure_future(gate(1))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        mark_registered("batch", 0)
        await asyncio.wait_for(waiting, 1)
        began = time.monotonic()
        await gate(2)  # run 1 never marked itself: the gate opens after the bound
        assert time.monotonic() - began == pytest.approx(0.2, abs=0.1)
    mark_registered("batch", 2)  # after the step: a no-op
    assert not early_start._registered
