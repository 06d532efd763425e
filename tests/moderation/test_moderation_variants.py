"""Moderation endpoint: one test per documented response variant (tests/emulators/README.md),
through the official `openai` client.

Results come back one per input, in input order, for a list of strings; one result for
a multimodal list (at most one image), with `category_applied_input_types` saying which
input kinds each category was scored on.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
from openai import AsyncOpenAI

from studio.moderation.openai_moderator import ModerationUnavailable, OpenAIModerator
from tests.emulators.openai_api import OpenAIModerationEmulator
from tests.moderation.conftest import API_KEY


async def test_text_results_map_to_pieces_by_position(
    openai_emu: OpenAIModerationEmulator, moderation_settings, make_items
):
    items = make_items(5, images=False)
    openai_emu.text_flags[items[2].text] = ["harassment"]
    scores = await OpenAIModerator(moderation_settings).score(items)
    flagged = {pid for pid, s in scores.items() if s.flagged_categories}
    assert flagged == {items[2].piece_id}
    assert scores[items[2].piece_id].flagged_categories == ["harassment"]


async def test_image_result_is_scored_on_image_categories_only(
    openai_emu: OpenAIModerationEmulator, moderation_settings, make_items, stage_image
):
    items = make_items(2)
    flagged_path = stage_image("p001", "nsfw-marker")
    items[1] = dataclasses.replace(items[1], image_path=flagged_path)
    openai_emu.image_flags["nsfw-marker"] = ["sexual"]
    scores = await OpenAIModerator(moderation_settings).score(items)
    assert scores["p001"].flagged_categories == ["sexual"]
    assert scores["p000"].flagged_categories == []
    image_request = next(r for r in openai_emu.requests if not isinstance(r["input"][0], str))
    assert [i["type"] for i in image_request["input"]] == ["image_url"]


async def test_category_applied_input_types_as_the_endpoint_answers_them(
    openai_emu: OpenAIModerationEmulator, moderation_settings
):
    """The shape the client reads: text categories apply to text only, six also to images."""
    async with AsyncOpenAI(api_key=API_KEY, base_url=moderation_settings.openai_base_url) as sdk:
        both = await sdk.moderations.create(
            model="omni-moderation-latest",
            input=[
                {"type": "text", "text": "hello"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        )
        texts = await sdk.moderations.create(model="omni-moderation-latest", input=["a", "b"])
    assert len(both.results) == 1 and len(texts.results) == 2
    applied = both.results[0].category_applied_input_types.model_dump(by_alias=True)
    assert applied["sexual"] == ["image", "text"] and applied["harassment"] == ["text"]


async def test_legacy_result_shape_without_illicit_or_applied_types(
    openai_emu: OpenAIModerationEmulator, moderation_settings, make_items
):
    openai_emu.legacy_shape = True
    items = make_items(3)
    openai_emu.text_flags[items[0].text] = ["violence"]
    scores = await OpenAIModerator(moderation_settings).score(items)
    assert scores[items[0].piece_id].flagged_categories == ["violence"]
    assert "illicit" not in scores[items[0].piece_id].scores  # null scores are dropped


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_transient_errors_are_retried(
    openai_emu: OpenAIModerationEmulator, moderation_settings, make_items, status
):
    openai_emu.fail_next(status)
    items = make_items(3, images=False)
    moderator = OpenAIModerator(moderation_settings)
    scores = await moderator.score(items)
    assert set(scores) == {i.piece_id for i in items}
    assert openai_emu.counters.requests("moderations.text") == 2


async def test_an_image_the_endpoint_refuses_holds_only_that_piece(
    openai_emu: OpenAIModerationEmulator, moderation_settings, make_items, stage_image, caplog
):
    caplog.set_level(logging.INFO, logger="studio.moderation")
    items = make_items(3)
    items[0] = dataclasses.replace(items[0], image_path=stage_image("p000", "broken-image"))
    openai_emu.image_errors["broken-image"] = 400
    scores = await OpenAIModerator(moderation_settings).score(items)
    assert "p000" not in scores  # unscored: the policy holds it for review
    assert {"p001", "p002"} <= set(scores)
    assert (
        "Moderation unavailable | Error: BadRequestError (HTTP 400) [invalid_request_error, "
        "request req_emu_" in caplog.text
    )


async def test_an_outage_of_text_moderation_raises_unavailable(
    openai_emu: OpenAIModerationEmulator, moderation_settings, make_items
):
    openai_emu.fail_always = 500
    with pytest.raises(ModerationUnavailable):
        await OpenAIModerator(moderation_settings).score(make_items(2, images=False))
    assert openai_emu.billed_jobs == 0  # the endpoint is free
