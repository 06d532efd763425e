"""Fixtures: a fresh Anthropic emulator per test and the specs of a batch."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from studio.hooks.settings import HookSettings
from studio.types import AvatarRef
from tests.emulators.anthropic_api import AnthropicEmulator
from tests.emulators.base import Behaviour

API_KEY = "sk-ant-test-SECRET-0123456789"


@pytest.fixture
def anthropic_emu() -> Iterator[AnthropicEmulator]:
    emulator = AnthropicEmulator(Behaviour(retry_after=0), api_key=API_KEY)
    emulator.min_cacheable_tokens = 200
    with emulator:
        yield emulator


@pytest.fixture
def hook_settings(anthropic_emu: AnthropicEmulator) -> HookSettings:
    return HookSettings(
        ANTHROPIC_API_KEY=API_KEY,
        ANTHROPIC_BASE_URL=anthropic_emu.url,
        HOOK_BACKOFF_BASE_SECONDS=0.01,
        HOOK_BACKOFF_MAX_SECONDS=0.05,
        HOOK_MAX_RETRIES=2,
        HOOK_TIMEOUT_SECONDS=5,
    )


@pytest.fixture
def avatar() -> AvatarRef:
    return AvatarRef(id="av-1", name="Mia", niche="fitness")
