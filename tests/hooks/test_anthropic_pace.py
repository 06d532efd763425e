"""The Anthropic hook writer tells the fleet (studio/providers/pace.py) of 429 and 529
answers and of accepted calls, and waits before each call, through the official client."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from studio.providers import pace
from studio.types import Platform
from tests.emulators.anthropic_api import AnthropicEmulator
from tests.hooks.batch_specs import make_specs
from tests.providers.test_pace_reports import Recorder


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    listener = Recorder()
    pace.register(listener)
    try:
        yield listener
    finally:
        pace.unregister(listener)


@pytest.mark.parametrize("status", [429, 529])
async def test_anthropic_reports_rate_limit_and_overload(
    anthropic_emu: AnthropicEmulator, hook_settings, avatar, recorder: Recorder, status
) -> None:
    from studio.hooks.anthropic_writer import AnthropicHookWriter

    anthropic_emu.behaviour.retry_after = 0.05
    anthropic_emu.fail_next(status)
    began = time.time()
    batch = await AnthropicHookWriter(hook_settings).write(
        make_specs(10), avatar, Platform.INSTAGRAM
    )
    assert batch.failures == 0
    told = [e for e in recorder.seen if e[1] == "anthropic"]
    assert told[0] == ("before", "anthropic")
    assert told[1] == ("throttled", "anthropic", status, 0.05)
    # the SDK's request hook noted when the throttled request was sent
    sent_at = recorder.sent_at[0]
    assert sent_at is not None and began <= sent_at <= time.time()
    assert ("ok", "anthropic") in told[2:]
