"""The OpenAI moderator through the real `openai` client against the emulator."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from studio.moderation.openai_moderator import ModerationUnavailable, OpenAIModerator
from studio.moderation.settings import ModerationSettings
from tests.emulators.openai_api import OpenAIModerationEmulator
from tests.moderation.conftest import API_KEY


async def test_fifty_pieces_one_text_call_and_one_image_call_each_under_the_cap(
    openai_emu: OpenAIModerationEmulator, moderation_settings: ModerationSettings, make_items
):
    openai_emu.behaviour.latency = (0.02, 0.02)
    settings = moderation_settings.model_copy(update={"max_concurrent": 4})
    items = make_items(50)
    moderator = OpenAIModerator(settings)

    scores = await moderator.score(items)

    assert openai_emu.counters.requests("moderations.text") == 1
    assert openai_emu.counters.requests("moderations.image") == 50
    assert 1 < openai_emu.counters.peak <= 4
    assert moderator.calls == 51
    assert moderator.cost_usd == pytest.approx(51 * settings.price_per_call_usd)
    text_request = next(r for r in openai_emu.requests if isinstance(r["input"][0], str))
    assert len(text_request["input"]) == 50
    assert text_request["model"] == "omni-moderation-latest"
    for request in openai_emu.requests:
        if not isinstance(request["input"][0], str):
            assert len(request["input"]) == 1
            assert request["input"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert set(scores) == {i.piece_id for i in items}
    assert all(not s.flagged_categories for s in scores.values())


async def test_text_and_image_flags_are_merged_per_piece(
    openai_emu: OpenAIModerationEmulator, moderation_settings: ModerationSettings,
    make_items, stage_image,
):
    openai_emu.text_flags["MARKER_TEXT_VIOLENCE"] = ["violence"]
    openai_emu.image_flags["MARKER_IMAGE_SEXUAL"] = ["sexual"]
    items = make_items(3)
    items[0] = dataclasses.replace(items[0], text="caption MARKER_TEXT_VIOLENCE")
    items[1] = dataclasses.replace(
        items[1], image_path=stage_image("p001x", "MARKER_IMAGE_SEXUAL")
    )

    scores = await OpenAIModerator(moderation_settings).score(items)

    assert scores["p000"].flagged_categories == ["violence"]
    assert scores["p001"].flagged_categories == ["sexual"]
    assert scores["p001"].scores["sexual"] > 0.9
    assert scores["p002"].flagged_categories == []


async def test_texts_are_chunked_by_the_batch_size(
    openai_emu: OpenAIModerationEmulator, moderation_settings: ModerationSettings, make_items
):
    settings = moderation_settings.model_copy(update={"text_batch_size": 20})
    await OpenAIModerator(settings).score(make_items(50, images=False))
    assert openai_emu.counters.requests("moderations.text") == 3
    assert openai_emu.counters.requests("moderations.image") == 0


@pytest.mark.parametrize("statuses", [(429,), (500, 503)])
async def test_transient_errors_are_retried(
    openai_emu: OpenAIModerationEmulator, moderation_settings: ModerationSettings,
    make_items, statuses,
):
    openai_emu.fail_next(*statuses)
    moderator = OpenAIModerator(moderation_settings)
    scores = await moderator.score(make_items(5, images=False))
    assert len(scores) == 5
    assert moderator.calls == 1 + len(statuses)


async def test_text_outage_raises_a_clear_error_without_the_key(
    openai_emu: OpenAIModerationEmulator, moderation_settings: ModerationSettings,
    make_items, caplog,
):
    caplog.set_level(logging.DEBUG)
    openai_emu.fail_always = 503
    moderator = OpenAIModerator(moderation_settings)

    with pytest.raises(ModerationUnavailable) as info:
        await moderator.score(make_items(4))

    assert "InternalServerError (HTTP 503)" in str(info.value)
    assert API_KEY not in str(info.value) and API_KEY not in caplog.text
    assert "Moderation unavailable | Error: InternalServerError (HTTP 503)" in caplog.text


async def test_a_failed_image_leaves_only_that_piece_unscored(
    openai_emu: OpenAIModerationEmulator, moderation_settings: ModerationSettings,
    make_items, stage_image,
):
    items = make_items(3)
    items[1] = dataclasses.replace(items[1], image_path=stage_image("p001x", "MARKER_BROKEN"))
    openai_emu.image_errors["MARKER_BROKEN"] = 500

    scores = await OpenAIModerator(moderation_settings).score(items)

    assert set(scores) == {"p000", "p002"}
    assert openai_emu.counters.requests("moderations.image") == 3 + 2  # 2 retries


async def test_a_wrong_key_is_not_retried_and_not_logged(
    openai_emu: OpenAIModerationEmulator, moderation_settings: ModerationSettings,
    make_items, caplog,
):
    caplog.set_level(logging.DEBUG)
    wrong = "sk-openai-wrong-SECRET-42"
    settings = moderation_settings.model_copy(
        update={"openai_api_key": type(moderation_settings.openai_api_key)(wrong)}
    )
    with pytest.raises(ModerationUnavailable) as info:
        await OpenAIModerator(settings).score(make_items(2, images=False))
    assert openai_emu.counters.requests("moderations.unauthorised") == 1
    assert "AuthenticationError (HTTP 401)" in str(info.value)
    assert wrong not in caplog.text and wrong not in str(info.value)
    assert wrong not in repr(settings)


def test_the_moderator_refuses_to_start_without_a_key():
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAIModerator(ModerationSettings(OPENAI_API_KEY=""))


@pytest.mark.parametrize("delta", [-1, 1])
async def test_an_answer_with_the_wrong_number_of_results_is_retried(
    openai_emu: OpenAIModerationEmulator, moderation_settings: ModerationSettings,
    make_items, delta,
):
    openai_emu.miscount_next(delta)
    moderator = OpenAIModerator(moderation_settings)

    scores = await moderator.score(make_items(5, images=False))

    assert set(scores) == {f"p{i:03d}" for i in range(5)}
    assert openai_emu.counters.requests("moderations.text") == 2


async def test_a_persistently_miscounted_text_answer_is_an_outage_not_a_pass(
    openai_emu: OpenAIModerationEmulator, moderation_settings: ModerationSettings,
    make_items, caplog,
):
    caplog.set_level(logging.DEBUG)
    openai_emu.miscount_always = -1

    with pytest.raises(ModerationUnavailable) as info:
        await OpenAIModerator(moderation_settings).score(make_items(4, images=False))

    assert "ResultCountMismatch" in str(info.value)
    assert openai_emu.counters.requests("moderations.text") == 3  # 2 retries
    assert API_KEY not in caplog.text


@pytest.mark.parametrize("delta", [-1, 1])
async def test_a_miscounted_image_answer_leaves_that_piece_unscored(
    openai_emu: OpenAIModerationEmulator, moderation_settings: ModerationSettings,
    make_items, stage_image, delta,
):
    items = make_items(3)
    items[1] = dataclasses.replace(items[1], image_path=stage_image("p001x", "MARKER_ODD"))
    openai_emu.image_miscount["MARKER_ODD"] = delta

    scores = await OpenAIModerator(moderation_settings).score(items)

    assert set(scores) == {"p000", "p002"}
    assert openai_emu.counters.requests("moderations.image") == 3 + 2  # 2 retries
