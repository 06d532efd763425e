"""The Claude hook writer through the real `anthropic` client against the emulator."""

from __future__ import annotations

import logging

import pytest

from studio.hooks.anthropic_writer import AnthropicHookWriter
from studio.hooks.platforms import style_for
from studio.hooks.settings import HookSettings
from studio.types import AvatarRef, Platform
from tests.emulators.anthropic_api import AnthropicEmulator
from tests.hooks.batch_specs import make_specs
from tests.hooks.conftest import API_KEY


async def test_fifty_pieces_take_five_calls_and_share_the_cached_prefix(
    anthropic_emu: AnthropicEmulator, hook_settings: HookSettings, avatar: AvatarRef, caplog
):
    caplog.set_level(logging.INFO, logger="studio.hooks")
    specs = make_specs(50)

    batch = await AnthropicHookWriter(hook_settings).write(specs, avatar, Platform.INSTAGRAM)

    assert anthropic_emu.counters.requests("messages") == 5
    assert batch.calls == 5
    assert set(batch.hooks) == {s.piece_id for s in specs}
    assert all(h.source == "claude" and not h.stand_in for h in batch.hooks.values())
    assert batch.failures == 0
    # one call wrote the shared prefix, the four others read it
    assert batch.tokens["cache_write"] > 0
    assert batch.tokens["cache_read"] == 4 * batch.tokens["cache_write"]
    for request in anthropic_emu.requests:
        assert request["system"][-1]["cache_control"] == {"type": "ephemeral"}
        assert request["output_config"]["format"]["type"] == "json_schema"
        assert request["messages"][0]["content"].count("piece_id: ") == 10
    expected = (
        batch.tokens["input"] * 1.0
        + batch.tokens["output"] * 5.0
        + batch.tokens["cache_write"] * 1.25
        + batch.tokens["cache_read"] * 0.10
    ) / 1e6
    assert batch.cost_usd == pytest.approx(expected, rel=1e-6)
    assert "Hook writer result | Written: 50/50" in caplog.text


async def test_group_size_and_concurrency_follow_the_settings(
    anthropic_emu: AnthropicEmulator, hook_settings: HookSettings, avatar: AvatarRef
):
    anthropic_emu.behaviour.latency = (0.05, 0.05)
    settings = hook_settings.model_copy(update={"batch_size": 4, "max_concurrent": 2})

    batch = await AnthropicHookWriter(settings).write(make_specs(22), avatar, Platform.TIKTOK)

    assert anthropic_emu.counters.requests("messages") == 6
    assert anthropic_emu.counters.peak <= 2
    assert len(batch.hooks) == 22


async def test_long_prompts_are_cut_to_the_token_limit(
    anthropic_emu: AnthropicEmulator, hook_settings: HookSettings, avatar: AvatarRef
):
    specs = make_specs(3, prompt="golden hour rooftop portrait " * 400)

    await AnthropicHookWriter(hook_settings).write(specs, avatar, Platform.INSTAGRAM)

    user = anthropic_emu.requests[0]["messages"][0]["content"]
    for line in user.splitlines():
        if line.startswith("piece_id:"):
            image = line.split("| image: ", 1)[1]
            assert len(image) <= 500 * 4 + 2


@pytest.mark.parametrize("platform", list(Platform))
async def test_hooks_respect_the_platform_length(
    anthropic_emu: AnthropicEmulator, hook_settings: HookSettings, avatar: AvatarRef, platform
):
    specs = make_specs(2)
    anthropic_emu.hook_overrides[specs[0].piece_id] = "A very long caption line " * 30

    batch = await AnthropicHookWriter(hook_settings).write(specs, avatar, platform)

    text = batch.hooks[specs[0].piece_id].text
    assert len(text) <= style_for(platform).max_chars
    assert batch.hooks[specs[0].piece_id].source == "claude"


@pytest.mark.parametrize(
    ("mode", "from_model"),
    [
        ("fenced", 10),
        ("prose", 10),
        ("missing_half", 5),
        ("empty_text", 0),
        ("wrong_types", 0),
        ("garbage", 0),
    ],
)
async def test_malformed_answers_are_repaired_or_fall_back_per_piece(
    anthropic_emu: AnthropicEmulator, hook_settings: HookSettings, avatar: AvatarRef,
    mode: str, from_model: int, caplog,
):
    caplog.set_level(logging.INFO, logger="studio.hooks")
    anthropic_emu.malformed = mode
    specs = make_specs(10)

    batch = await AnthropicHookWriter(hook_settings).write(specs, avatar, Platform.INSTAGRAM)

    claude = [h for h in batch.hooks.values() if h.source == "claude"]
    template = [h for h in batch.hooks.values() if h.source == "template"]
    assert len(claude) == from_model
    assert len(template) == 10 - from_model
    assert all(h.stand_in and h.text for h in template)
    assert batch.failures == 10 - from_model
    assert f"Hook writer result | Written: {from_model}/10" in caplog.text


async def test_a_truncated_answer_keeps_the_complete_entries(
    anthropic_emu: AnthropicEmulator, hook_settings: HookSettings, avatar: AvatarRef
):
    anthropic_emu.malformed = "truncated"
    batch = await AnthropicHookWriter(hook_settings).write(
        make_specs(10), avatar, Platform.INSTAGRAM
    )
    sources = [h.source for h in batch.hooks.values()]
    assert 0 < sources.count("claude") < 10
    assert len(batch.hooks) == 10


async def test_one_missing_hook_falls_back_for_that_piece_only(
    anthropic_emu: AnthropicEmulator, hook_settings: HookSettings, avatar: AvatarRef
):
    specs = make_specs(10)
    anthropic_emu.hook_overrides[specs[3].piece_id] = None

    batch = await AnthropicHookWriter(hook_settings).write(specs, avatar, Platform.TWITTER)

    assert batch.hooks[specs[3].piece_id].source == "template"
    assert sum(h.source == "claude" for h in batch.hooks.values()) == 9


@pytest.mark.parametrize("statuses", [(429,), (529,), (500, 429)])
async def test_transient_errors_are_retried(
    anthropic_emu: AnthropicEmulator, hook_settings: HookSettings, avatar: AvatarRef, statuses
):
    anthropic_emu.fail_next(*statuses)

    batch = await AnthropicHookWriter(hook_settings).write(
        make_specs(10), avatar, Platform.INSTAGRAM
    )

    assert anthropic_emu.counters.requests("messages") == len(statuses) + 1
    assert batch.calls == len(statuses) + 1
    assert all(h.source == "claude" for h in batch.hooks.values())


async def test_exhausted_retries_fall_back_to_templates_for_that_group(
    anthropic_emu: AnthropicEmulator, hook_settings: HookSettings, avatar: AvatarRef, caplog
):
    caplog.set_level(logging.INFO, logger="studio.hooks")
    anthropic_emu.fail_next(429, 429, 429)  # first group: 1 try + 2 retries
    specs = make_specs(20)

    batch = await AnthropicHookWriter(hook_settings).write(specs, avatar, Platform.INSTAGRAM)

    first, second = specs[:10], specs[10:]
    assert all(batch.hooks[s.piece_id].source == "template" for s in first)
    assert all(batch.hooks[s.piece_id].source == "claude" for s in second)
    assert "Hook generation failed | Error: RateLimitError (HTTP 429)" in caplog.text
    assert "Hook writer result | Written: 10/20" in caplog.text


async def test_five_straight_failures_open_the_breaker(
    anthropic_emu: AnthropicEmulator, hook_settings: HookSettings, avatar: AvatarRef, caplog
):
    caplog.set_level(logging.INFO, logger="studio.hooks")
    anthropic_emu.fail_always = 500
    settings = hook_settings.model_copy(update={"max_retries": 0, "max_concurrent": 1})
    writer = AnthropicHookWriter(settings)

    batch = await writer.write(make_specs(100), avatar, Platform.INSTAGRAM)

    assert anthropic_emu.counters.requests("messages") == 5
    assert writer.breaker.is_open
    assert all(h.source == "template" for h in batch.hooks.values())
    assert caplog.text.count("Error: CircuitOpen") == 5
    assert "Hook writer result | Written: 0/100" in caplog.text


async def test_client_errors_are_not_retried_and_no_key_leaks(
    anthropic_emu: AnthropicEmulator, hook_settings: HookSettings, avatar: AvatarRef, caplog
):
    caplog.set_level(logging.DEBUG)
    wrong = "sk-ant-wrong-SECRET-999"
    settings = hook_settings.model_copy(update={"anthropic_api_key": type(
        hook_settings.anthropic_api_key)(wrong)})

    batch = await AnthropicHookWriter(settings).write(make_specs(10), avatar, Platform.TIKTOK)

    assert anthropic_emu.counters.requests("messages") == 1
    assert all(h.source == "template" for h in batch.hooks.values())
    assert "AuthenticationError (HTTP 401)" in caplog.text
    assert wrong not in caplog.text and API_KEY not in caplog.text
    assert wrong not in batch.model_dump_json()


async def test_success_logs_never_contain_the_key(
    anthropic_emu: AnthropicEmulator, hook_settings: HookSettings, avatar: AvatarRef, caplog
):
    caplog.set_level(logging.DEBUG)
    anthropic_emu.fail_next(429)
    await AnthropicHookWriter(hook_settings).write(make_specs(12), avatar, Platform.INSTAGRAM)
    assert API_KEY not in caplog.text
    assert API_KEY not in repr(hook_settings)


def test_the_writer_refuses_to_start_without_a_key():
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY") as info:
        AnthropicHookWriter(HookSettings(ANTHROPIC_API_KEY=""))
    assert "sk-" not in str(info.value)
