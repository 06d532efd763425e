"""hook_mode through the real flows, the `anthropic` client and the emulator: the
scheduled fan-out sends each batch's hooks as ONE Message Batch (one request per group
of 10), a batch that does not finish in time is cancelled and its groups go direct,
and the measured cost of message-batch hooks is half that of direct calls."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from studio.hooks import registry as hooks_registry
from tests.emulators.anthropic_api import AnthropicEmulator
from tests.emulators.base import Behaviour

KEY = "sk-ant-modes-SECRET-7"


@pytest.fixture
def claude(monkeypatch: pytest.MonkeyPatch, studio_env) -> Iterator[AnthropicEmulator]:
    with AnthropicEmulator(Behaviour(retry_after=0), api_key=KEY) as emulator:
        emulator.min_cacheable_tokens = 200
        monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", emulator.url)
        monkeypatch.setenv("HOOK_BACKOFF_BASE_SECONDS", "0.01")
        monkeypatch.setenv("HOOK_MESSAGE_BATCH_POLL_SECONDS", "0.05")
        monkeypatch.setenv("HOOK_TIMEOUT_SECONDS", "1")
        hooks_registry.reset_breakers()
        yield emulator


async def test_the_scheduled_fan_out_sends_one_message_batch_per_avatar(
    claude, studio_env
) -> None:
    from flows.scheduled import scheduled_batches
    from studio.avatars import add_avatar
    from studio.db.engine import session_scope

    with session_scope() as session:
        add_avatar(session, "weekly-one", "travel", "https://w.example/a.safetensors", "weekly")

    summary = await scheduled_batches(cadence="weekly", num_pieces=25)

    assert list(summary) == ["weekly-one"]
    assert claude.counters.requests("batches.create") == 1
    assert claude.counters.requests("messages") == 0
    (sent,) = claude.batches.values()
    assert [r["custom_id"] for r in sent["requests"]] == ["group-0", "group-1", "group-2"]
    log = Path(studio_env.log_file).read_text()
    assert "Hook generation summary | Success: 25/25 | Template fallback: 0 | Calls: 3" in log


async def test_on_demand_batches_call_direct_and_auto_outside_a_schedule_too(
    claude, demo_avatar
) -> None:
    from flows.content_batch import content_batch

    await content_batch(avatar_id=demo_avatar, num_pieces=20, seed=1)
    await content_batch(avatar_id=demo_avatar, num_pieces=20, seed=1, hook_mode="auto")

    assert claude.counters.requests("batches.create") == 0
    assert claude.counters.requests("messages") == 4


async def test_a_message_batch_not_done_in_time_is_cancelled_and_its_groups_go_direct(
    claude, demo_avatar, studio_env, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    from flows.content_batch import content_batch

    caplog.set_level(logging.INFO)
    monkeypatch.setenv("HOOK_MESSAGE_BATCH_BUDGET_SECONDS", "1.5")  # 0.5 s of polling
    claude.batch_never_ends = True

    result = await content_batch(
        avatar_id=demo_avatar, num_pieces=20, seed=2, hook_mode="message-batches"
    )

    assert claude.counters.requests("batches.create") == 1
    assert claude.counters.requests("batches.cancel") == 1
    assert claude.counters.requests("messages") == 2
    assert result.failed == 0
    log = Path(studio_env.log_file).read_text()
    assert "Hook generation summary | Success: 20/20 | Template fallback: 0" in log
    assert "Error: BatchNotEnded" in caplog.text
    assert KEY not in log and KEY not in caplog.text


async def test_no_time_left_in_the_batch_means_direct_calls(
    claude, demo_avatar, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.content_batch import content_batch

    monkeypatch.setenv("HOOK_MESSAGE_BATCH_MARGIN_SECONDS", "600")  # = BATCH_GENERATION_TIMEOUT

    await content_batch(avatar_id=demo_avatar, num_pieces=10, seed=3, hook_mode="message-batches")

    assert claude.counters.requests("batches.create") == 0
    assert claude.counters.requests("messages") == 1


async def test_message_batch_hooks_cost_half_of_direct_calls(claude, demo_avatar) -> None:
    from flows.content_batch import content_batch

    direct = await content_batch(avatar_id=demo_avatar, num_pieces=30, seed=4)
    claude.clear_cache()
    batched = await content_batch(
        avatar_id=demo_avatar, num_pieces=30, seed=4, hook_mode="message-batches"
    )

    assert claude.counters.requests("messages") == 3
    assert claude.counters.requests("batches.create") == 1
    hooks_direct = direct.cost_breakdown["hooks"]
    hooks_batched = batched.cost_breakdown["hooks"]
    assert hooks_direct > 0
    assert hooks_batched == pytest.approx(hooks_direct / 2, rel=0.02)


async def test_an_unknown_hook_mode_is_refused_before_anything_runs(
    claude, demo_avatar
) -> None:
    from prefect.exceptions import ParameterTypeError

    from flows.content_batch import content_batch

    # hook_mode is an enum in the flow's parameter schema: refused before the flow runs
    with pytest.raises(ParameterTypeError, match="hook_mode"):
        await content_batch(avatar_id=demo_avatar, num_pieces=5, hook_mode="cheap")

    assert claude.counters.requests() == 0
