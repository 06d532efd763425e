"""Scheduled batches through the Message Batches API, with the fallbacks to direct calls."""

from __future__ import annotations

import logging

import pytest

from studio.hooks.anthropic_writer import AnthropicHookWriter
from studio.hooks.settings import HookSettings
from studio.types import AvatarRef, Platform
from tests.emulators.anthropic_api import AnthropicEmulator
from tests.hooks.batch_specs import make_specs


@pytest.fixture
def batch_settings(hook_settings: HookSettings) -> HookSettings:
    return hook_settings.model_copy(
        update={
            "use_message_batches": True,
            "message_batch_poll_seconds": 0.05,
            "timeout_seconds": 1.0,
            "message_batch_budget_seconds": 10.0,
        }
    )


async def test_batches_api_costs_half_of_direct_calls(
    anthropic_emu: AnthropicEmulator,
    hook_settings: HookSettings,
    batch_settings: HookSettings,
    avatar: AvatarRef,
):
    specs = make_specs(50)
    anthropic_emu.batch_processing_seconds = 0.2
    direct = await AnthropicHookWriter(hook_settings).write(specs, avatar, Platform.INSTAGRAM)
    anthropic_emu.clear_cache()
    anthropic_emu.counters.reset()

    batched = await AnthropicHookWriter(batch_settings).write(specs, avatar, Platform.INSTAGRAM)

    assert anthropic_emu.counters.requests("messages") == 0
    assert anthropic_emu.counters.requests("batches.create") == 1
    assert anthropic_emu.counters.requests("batches.retrieve") >= 2
    assert all(h.source == "claude" for h in batched.hooks.values())
    assert batched.tokens == direct.tokens
    assert batched.cost_usd == pytest.approx(direct.cost_usd / 2)


async def test_a_batch_that_does_not_end_in_time_is_cancelled_and_sent_direct(
    anthropic_emu: AnthropicEmulator, batch_settings: HookSettings, avatar: AvatarRef, caplog
):
    caplog.set_level(logging.INFO, logger="studio.hooks")
    anthropic_emu.batch_never_ends = True
    writer = AnthropicHookWriter(batch_settings, time_budget_seconds=1.3)

    batch = await writer.write(make_specs(30), avatar, Platform.INSTAGRAM)

    assert anthropic_emu.counters.requests("batches.cancel") == 1
    assert anthropic_emu.counters.requests("messages") == 3
    assert all(h.source == "claude" for h in batch.hooks.values())
    assert "Error: BatchNotEnded" in caplog.text


async def test_errored_requests_in_a_batch_go_direct(
    anthropic_emu: AnthropicEmulator, batch_settings: HookSettings, avatar: AvatarRef
):
    anthropic_emu.batch_errored = {"group-1"}

    batch = await AnthropicHookWriter(batch_settings).write(
        make_specs(30), avatar, Platform.INSTAGRAM
    )

    assert anthropic_emu.counters.requests("messages") == 1
    assert all(h.source == "claude" for h in batch.hooks.values())


async def test_a_failing_batch_create_goes_direct(
    anthropic_emu: AnthropicEmulator, batch_settings: HookSettings, avatar: AvatarRef
):
    settings = batch_settings.model_copy(update={"max_retries": 0})
    anthropic_emu.fail_next(500)

    batch = await AnthropicHookWriter(settings).write(make_specs(20), avatar, Platform.TIKTOK)

    assert anthropic_emu.counters.requests("batches.create") == 1
    assert anthropic_emu.counters.requests("messages") == 2
    assert all(h.source == "claude" for h in batch.hooks.values())


async def test_a_budget_too_short_skips_the_batches_api(
    anthropic_emu: AnthropicEmulator, batch_settings: HookSettings, avatar: AvatarRef
):
    writer = AnthropicHookWriter(batch_settings, time_budget_seconds=0.5)

    await writer.write(make_specs(20), avatar, Platform.INSTAGRAM)

    assert anthropic_emu.counters.requests("batches.create") == 0
    assert anthropic_emu.counters.requests("messages") == 2
