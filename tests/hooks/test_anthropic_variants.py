"""Messages API: one test per documented stop_reason and error shape (see
tests/emulators/README.md), through the official `anthropic` client.

What each must do: an answer cut short keeps the hooks that survive repair and falls
back per piece; a refusal's text is never used (every piece of the group gets its
template hook, the reason logged); error answers are retried per policy and named by
type, status, error type and request id; the tokens of every answer are counted.
"""

from __future__ import annotations

import logging

import pytest

from studio.hooks.anthropic_writer import AnthropicHookWriter
from studio.hooks.settings import HookSettings
from studio.types import AvatarRef, Platform
from tests.emulators.anthropic_api import AnthropicEmulator
from tests.hooks.batch_specs import make_specs


async def write(settings: HookSettings, avatar: AvatarRef, n: int = 10, **kwargs):
    return await AnthropicHookWriter(settings, **kwargs).write(
        make_specs(n), avatar, Platform.INSTAGRAM
    )


@pytest.mark.parametrize("stop_reason", ["end_turn", "stop_sequence", "tool_use"])
async def test_a_finished_answer_gives_every_hook(
    anthropic_emu: AnthropicEmulator, hook_settings, avatar, stop_reason
):
    anthropic_emu.stop_reason_next.append(stop_reason)
    batch = await write(hook_settings, avatar)
    assert batch.failures == 0
    assert all(h.source == "claude" for h in batch.hooks.values())
    assert anthropic_emu.billed_jobs == 1


@pytest.mark.parametrize(
    "stop_reason", ["max_tokens", "model_context_window_exceeded", "pause_turn"]
)
async def test_an_answer_cut_short_keeps_what_survives_and_falls_back_per_piece(
    anthropic_emu: AnthropicEmulator, hook_settings, avatar, stop_reason, caplog
):
    caplog.set_level(logging.INFO, logger="studio.hooks")
    anthropic_emu.stop_reason_next.append(stop_reason)
    batch = await write(hook_settings, avatar)
    claude = [h for h in batch.hooks.values() if h.source == "claude"]
    template = [h for h in batch.hooks.values() if h.source == "template"]
    assert len(batch.hooks) == 10 and claude and template
    assert batch.failures == len(template)
    assert (
        f"Hook generation cut short | Stop reason: {stop_reason} | Written: {len(claude)}/10"
        in caplog.text
    )
    assert batch.tokens["output"] > 0 and batch.cost_usd > 0  # the cut answer was billed
    assert anthropic_emu.counters.requests("messages") == 1  # not retried: it would cut again


async def test_a_refusal_gives_template_hooks_with_the_reason(
    anthropic_emu: AnthropicEmulator, hook_settings, avatar, caplog
):
    caplog.set_level(logging.INFO, logger="studio.hooks")
    anthropic_emu.stop_reason_next.append("refusal")  # carries part of a valid answer
    batch = await write(hook_settings, avatar)
    assert all(h.source == "template" and h.stand_in for h in batch.hooks.values())
    assert batch.failures == 10
    assert (
        "Hook generation failed | Error: Refusal (stop_reason refusal) | Pieces: 10 | "
        "Fallback: template" in caplog.text
    )
    assert batch.cost_usd > 0 and anthropic_emu.billed_jobs == 1


async def test_a_refusal_in_one_group_leaves_the_others_alone(
    anthropic_emu: AnthropicEmulator, hook_settings, avatar
):
    anthropic_emu.stop_reason_next.append("refusal")  # the first call only
    batch = await write(hook_settings, avatar, n=20)
    sources = [batch.hooks[s.piece_id].source for s in make_specs(20)]
    assert sources[:10] == ["template"] * 10 and sources[10:] == ["claude"] * 10


@pytest.mark.parametrize(
    ("status", "kind", "error_type"),
    [
        (529, "OverloadedError", "overloaded_error"),
        (429, "RateLimitError", "rate_limit_error"),
        (500, "InternalServerError", "api_error"),
    ],
)
async def test_transient_errors_are_retried_then_answered(
    anthropic_emu: AnthropicEmulator, hook_settings, avatar, caplog, status, kind, error_type
):
    caplog.set_level(logging.INFO, logger="studio.hooks")
    anthropic_emu.fail_next(status)
    batch = await write(hook_settings, avatar)
    assert batch.failures == 0 and batch.calls == 2
    line = next(r.getMessage() for r in caplog.records if "retry" in r.getMessage())
    assert f"Error: {kind} (HTTP {status}) [{error_type}, request req_emu_" in line


async def test_429_retry_after_is_honoured(
    anthropic_emu: AnthropicEmulator, hook_settings, avatar
):
    import time

    anthropic_emu.behaviour.retry_after = 0.3
    anthropic_emu.fail_next(429)
    settings = hook_settings.model_copy(update={"backoff_max_seconds": 1.0})
    started = time.monotonic()
    batch = await write(settings, avatar)
    assert batch.failures == 0
    assert time.monotonic() - started >= 0.3  # the server's wait, not the 0.01 s backoff


@pytest.mark.parametrize(
    ("status", "kind"), [(400, "BadRequestError"), (401, "AuthenticationError")]
)
async def test_permanent_errors_fall_back_at_once_naming_the_error(
    anthropic_emu: AnthropicEmulator, hook_settings, avatar, caplog, status, kind
):
    caplog.set_level(logging.INFO, logger="studio.hooks")
    anthropic_emu.fail_next(status)
    batch = await write(hook_settings, avatar)
    assert batch.failures == 10 and anthropic_emu.counters.requests("messages") == 1
    assert f"Hook generation failed | Error: {kind} (HTTP {status}) [" in caplog.text
    assert hook_settings.anthropic_api_key.get_secret_value() not in caplog.text


@pytest.mark.parametrize("result", ["errored", "expired"])
async def test_message_batch_requests_that_errored_or_expired_go_direct(
    anthropic_emu: AnthropicEmulator, hook_settings, avatar, result, caplog
):
    caplog.set_level(logging.INFO, logger="studio.hooks")
    settings = hook_settings.model_copy(
        update={"message_batch_poll_seconds": 0.05, "timeout_seconds": 1.0}
    )
    getattr(anthropic_emu, f"batch_{result}").add("group-0")
    batch = await write(settings, avatar, n=20, use_message_batches=True, time_budget_seconds=10)
    assert batch.failures == 0
    assert anthropic_emu.counters.requests("messages") == 1  # group-0 only, direct
    reason = "errored (api_error)" if result == "errored" else "expired"
    assert f"Message batch request not answered | Group: 0 | Result: {reason}" in caplog.text


async def test_a_refusal_inside_a_message_batch_falls_back_for_that_group(
    anthropic_emu: AnthropicEmulator, hook_settings, avatar
):
    settings = hook_settings.model_copy(
        update={"message_batch_poll_seconds": 0.05, "timeout_seconds": 1.0}
    )
    anthropic_emu.stop_reason_next.append("refusal")
    batch = await write(settings, avatar, n=20, use_message_batches=True, time_budget_seconds=10)
    assert batch.failures == 10
    assert anthropic_emu.counters.requests("messages") == 0  # not re-asked: it was answered
