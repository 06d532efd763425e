"""Scheduled batches through the Message Batches API, with the fallbacks to direct calls."""

from __future__ import annotations

import logging

import pytest

from studio.hooks.anthropic_writer import AnthropicHookWriter
from studio.hooks.settings import HookSettings
from studio.types import AvatarRef, Platform
from tests.emulators.anthropic_api import AnthropicEmulator
from tests.hooks.batch_specs import make_specs
from tests.hooks.conftest import API_KEY


@pytest.fixture
def batch_settings(hook_settings: HookSettings) -> HookSettings:
    return hook_settings.model_copy(
        update={
            "message_batch_poll_seconds": 0.05,
            "timeout_seconds": 1.0,
            "message_batch_budget_seconds": 10.0,
        }
    )


def batch_writer(settings: HookSettings, budget: float = 10.0) -> AnthropicHookWriter:
    return AnthropicHookWriter(settings, use_message_batches=True, time_budget_seconds=budget)


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

    batched = await batch_writer(batch_settings).write(specs, avatar, Platform.INSTAGRAM)

    assert anthropic_emu.counters.requests("messages") == 0
    assert anthropic_emu.counters.requests("batches.create") == 1
    assert anthropic_emu.counters.requests("batches.retrieve") >= 2
    (sent,) = anthropic_emu.batches.values()
    assert [r["custom_id"] for r in sent["requests"]] == [f"group-{i}" for i in range(5)]
    assert all(h.source == "claude" for h in batched.hooks.values())
    assert batched.tokens == direct.tokens
    assert batched.cost_usd == pytest.approx(direct.cost_usd / 2)


async def test_a_batch_that_does_not_end_in_time_is_cancelled_and_sent_direct(
    anthropic_emu: AnthropicEmulator, batch_settings: HookSettings, avatar: AvatarRef, caplog
):
    caplog.set_level(logging.INFO, logger="studio.hooks")
    anthropic_emu.batch_never_ends = True

    batch = await batch_writer(batch_settings, 1.3).write(
        make_specs(30), avatar, Platform.INSTAGRAM
    )

    assert anthropic_emu.counters.requests("batches.cancel") == 1
    assert anthropic_emu.counters.requests("messages") == 3
    assert all(h.source == "claude" for h in batch.hooks.values())
    assert "Error: BatchNotEnded" in caplog.text
    assert "Groups finished: 0/3 | Direct: 3" in caplog.text


async def test_groups_finished_before_the_cancel_keep_their_batch_results(
    anthropic_emu: AnthropicEmulator, batch_settings: HookSettings, avatar: AvatarRef, caplog
):
    caplog.set_level(logging.INFO, logger="studio.hooks")
    anthropic_emu.batch_slow = {"group-2"}

    batch = await batch_writer(batch_settings, 1.3).write(
        make_specs(30), avatar, Platform.INSTAGRAM
    )

    assert anthropic_emu.counters.requests("batches.cancel") == 1
    assert anthropic_emu.counters.requests("batches.results") == 1
    assert anthropic_emu.counters.requests("messages") == 1  # only the unfinished group
    sent = anthropic_emu.requests[-1]["messages"][-1]["content"]
    assert "b1-p020" in str(sent) and "b1-p000" not in str(sent)
    assert all(h.source == "claude" for h in batch.hooks.values())
    assert "Groups finished: 2/3 | Direct: 1" in caplog.text


async def test_a_failed_cancel_still_sends_every_group_direct(
    anthropic_emu: AnthropicEmulator, batch_settings: HookSettings, avatar: AvatarRef, caplog
):
    caplog.set_level(logging.DEBUG)
    anthropic_emu.batch_never_ends = True
    anthropic_emu.cancel_fails = 500

    batch = await batch_writer(batch_settings, 1.3).write(
        make_specs(30), avatar, Platform.INSTAGRAM
    )

    assert anthropic_emu.counters.requests("batches.cancel") == 1  # best effort, once
    assert anthropic_emu.counters.requests("batches.results") == 0
    assert anthropic_emu.counters.requests("messages") == 3
    assert all(h.source == "claude" for h in batch.hooks.values())
    assert batch.failures == 0
    assert "Message batch cancel failed | Error: InternalServerError (HTTP 500)" in caplog.text
    assert API_KEY not in caplog.text


async def test_errored_requests_in_a_batch_go_direct(
    anthropic_emu: AnthropicEmulator, batch_settings: HookSettings, avatar: AvatarRef
):
    anthropic_emu.batch_errored = {"group-1"}

    batch = await batch_writer(batch_settings).write(make_specs(30), avatar, Platform.INSTAGRAM)

    assert anthropic_emu.counters.requests("messages") == 1
    assert all(h.source == "claude" for h in batch.hooks.values())


async def test_a_failing_batch_create_goes_direct(
    anthropic_emu: AnthropicEmulator, batch_settings: HookSettings, avatar: AvatarRef
):
    settings = batch_settings.model_copy(update={"max_retries": 0})
    anthropic_emu.fail_next(500)

    batch = await batch_writer(settings).write(make_specs(20), avatar, Platform.TIKTOK)

    assert anthropic_emu.counters.requests("batches.create") == 1
    assert anthropic_emu.counters.requests("messages") == 2
    assert all(h.source == "claude" for h in batch.hooks.values())


async def test_a_budget_too_short_skips_the_batches_api(
    anthropic_emu: AnthropicEmulator, batch_settings: HookSettings, avatar: AvatarRef
):
    await batch_writer(batch_settings, 0.5).write(make_specs(20), avatar, Platform.INSTAGRAM)

    assert anthropic_emu.counters.requests("batches.create") == 0
    assert anthropic_emu.counters.requests("messages") == 2
