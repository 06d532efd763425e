"""The safety policy end to end through the OpenAI moderator and the emulator."""

from __future__ import annotations

import dataclasses
import logging
import re

import pytest

from studio.moderation.local import LocalModerator
from studio.moderation.openai_moderator import OpenAIModerator
from studio.moderation.policy import SafetyReview
from studio.moderation.settings import ModerationSettings
from tests.emulators.openai_api import OpenAIModerationEmulator
from tests.moderation.conftest import API_KEY

SEXUAL = "MARKER_TIER_MISMATCH"
MINORS = "MARKER_MINORS"
VIOLENCE = "MARKER_GRAPHIC"
HARASS = "MARKER_HARASSMENT"


@pytest.fixture(autouse=True)
def scripted_flags(openai_emu: OpenAIModerationEmulator) -> None:
    openai_emu.text_flags.update({
        SEXUAL: ["sexual"],
        MINORS: ["sexual", "sexual/minors"],
        VIOLENCE: ["violence", "violence/graphic"],
        HARASS: ["harassment"],
    })
    openai_emu.image_flags[SEXUAL] = ["sexual"]


def review(settings: ModerationSettings, screen: bool = True) -> SafetyReview:
    return SafetyReview(
        OpenAIModerator(settings), settings, screen=LocalModerator() if screen else None
    )


def with_text(item, text: str):
    return dataclasses.replace(item, text=text)


@pytest.mark.parametrize("action", ["reject", "retier"])
async def test_a_flagged_capa1_piece_never_leaves_as_capa1(
    moderation_settings: ModerationSettings, make_items, stage_image, action, caplog
):
    caplog.set_level(logging.INFO, logger="studio.moderation")
    settings = moderation_settings.model_copy(update={"capa1_sexual_action": action})
    items = make_items(4)
    items[0] = with_text(items[0], f"caption {SEXUAL}")
    items[1] = dataclasses.replace(items[1], image_path=stage_image("img1", SEXUAL))

    report = await review(settings).run(items)

    for pid in ("p000", "p001"):
        verdict = report.verdicts[pid]
        if action == "reject":
            assert verdict.status == "rejected"
        else:
            assert (verdict.status, verdict.tier) == ("retiered", "capa2")
        assert not (verdict.status in ("passed", "retiered", "skipped") and verdict.tier == "capa1")
    assert report.verdicts["p002"].status == "passed"


async def test_sexual_content_is_fine_on_capa2_and_capa3(
    moderation_settings: ModerationSettings, make_items
):
    items = [with_text(i, f"caption {SEXUAL}") for i in make_items(2, tier="capa2")]
    items += [with_text(i, f"caption {SEXUAL}") for i in make_items(2, tier="capa3", prefix="q")]
    report = await review(moderation_settings).run(items)
    assert {v.status for v in report.verdicts.values()} == {"passed"}


async def test_other_flagged_categories_reject_on_any_tier(
    moderation_settings: ModerationSettings, make_items
):
    items = [with_text(make_items(1, tier="capa3")[0], f"x {HARASS}")]
    report = await review(moderation_settings).run(items)
    assert report.verdicts["p000"].status == "rejected"
    assert "harassment" in (report.verdicts["p000"].reason or "")


async def test_sexual_minors_is_rejected_with_every_option_set_to_skip(
    moderation_settings: ModerationSettings, make_items, caplog
):
    caplog.set_level(logging.INFO, logger="studio.moderation")
    settings = moderation_settings.model_copy(update={
        "enabled": False,
        "skip_categories": ["fitness", "lifestyle", "general"],
        "sample_rate": 0.0,
        "hard_blocked_categories": ModerationSettings(
            HARD_BLOCKED_CATEGORIES="").hard_blocked_categories,
        "capa1_sexual_action": "retier",
    })
    capa3 = with_text(make_items(1, tier="capa3", prefix="a")[0], f"x {MINORS}")
    custom = with_text(make_items(1, custom=True, prefix="b")[0], f"x {MINORS}")
    # a capa1 template piece the configuration would skip: the free local screen catches it
    template = with_text(make_items(1, prefix="c")[0], "nsfw set of an underage model")

    report = await review(settings).run([capa3, custom, template])

    assert settings.hard_blocked_categories == ["sexual/minors"]
    for pid in ("a000", "b000", "c000"):
        assert report.verdicts[pid].status == "rejected"
        assert "sexual/minors" in (report.verdicts[pid].reason or "")
    assert "Content rejected | Reason: hard-blocked category sexual/minors" in caplog.text


async def test_hard_blocked_categories_reject_capa3_too(
    moderation_settings: ModerationSettings, make_items
):
    items = [with_text(make_items(1, tier="capa3")[0], f"x {VIOLENCE}")]
    report = await review(moderation_settings).run(items)
    assert report.verdicts["p000"].status == "rejected"
    assert "violence/graphic" in (report.verdicts["p000"].reason or "")


async def test_a_moderation_outage_holds_pieces_for_review(
    openai_emu: OpenAIModerationEmulator, moderation_settings: ModerationSettings,
    make_items, caplog,
):
    caplog.set_level(logging.DEBUG)
    openai_emu.fail_always = 503
    items = make_items(5) + make_items(3, tier="capa2", prefix="q")

    report = await review(moderation_settings).run(items)

    assert {v.status for v in report.verdicts.values()} == {"pending_review"}
    assert "Safety check summary | Passed: 0, Rejected: 0/8 | Retiered: 0 | Pending review: 8" \
        in caplog.text
    assert API_KEY not in caplog.text


async def test_a_failed_image_holds_only_that_piece(
    openai_emu: OpenAIModerationEmulator, moderation_settings: ModerationSettings,
    make_items, stage_image,
):
    items = make_items(3)
    items[2] = dataclasses.replace(items[2], image_path=stage_image("b", "MARKER_BROKEN"))
    openai_emu.image_errors["MARKER_BROKEN"] = 503
    report = await review(moderation_settings).run(items)
    assert [v.status for v in report.verdicts.values()] == ["passed", "passed", "pending_review"]


async def test_sampling_checks_a_fifth_of_capa1_templates_but_every_custom_piece(
    openai_emu: OpenAIModerationEmulator, moderation_settings: ModerationSettings, make_items
):
    settings = moderation_settings.model_copy(update={"sample_rate": 0.2})
    items = make_items(50) + make_items(5, custom=True, prefix="c")

    report = await review(settings).run(items, seed="batch-1")

    checked = [v for v in report.verdicts.values() if v.status == "passed"]
    skipped = [v for v in report.verdicts.values() if v.status == "skipped"]
    assert len(checked) == 15 and len(skipped) == 40
    assert all(report.verdicts[f"c{i:03d}"].status == "passed" for i in range(5))
    assert openai_emu.counters.requests("moderations.image") == 15
    assert report.calls == 16
    assert report.cost_usd == pytest.approx(16 * settings.price_per_call_usd)


async def test_a_flagged_sample_gets_the_rest_of_the_batch_checked(
    openai_emu: OpenAIModerationEmulator, moderation_settings: ModerationSettings, make_items
):
    settings = moderation_settings.model_copy(update={"sample_rate": 0.2})
    items = [with_text(i, f"caption {SEXUAL}") for i in make_items(10)]

    report = await review(settings, screen=False).run(items, seed="s")

    assert {v.status for v in report.verdicts.values()} == {"rejected"}
    assert openai_emu.counters.requests("moderations.text") == 2


async def test_skip_categories_and_disabled_apply_to_capa1_templates_only(
    openai_emu: OpenAIModerationEmulator, moderation_settings: ModerationSettings, make_items
):
    settings = moderation_settings.model_copy(
        update={"skip_categories": ["fitness"], "enabled": True}
    )
    items = make_items(3) + make_items(2, tier="capa2", prefix="q") + make_items(
        2, custom=True, prefix="c"
    )
    report = await review(settings).run(items)
    assert [report.verdicts[f"p{i:03d}"].status for i in range(3)] == ["skipped"] * 3
    assert report.verdicts["p000"].reason == "skipped category fitness"
    assert all(report.verdicts[p].status == "passed" for p in ("q000", "q001", "c000", "c001"))

    disabled = settings.model_copy(update={"enabled": False, "skip_categories": []})
    report = await review(disabled).run(items)
    assert [report.verdicts[f"p{i:03d}"].status for i in range(3)] == ["skipped"] * 3
    assert all(report.verdicts[p].status == "passed" for p in ("q000", "q001", "c000", "c001"))


async def test_log_lines_match_the_spec_greps(
    moderation_settings: ModerationSettings, make_items, caplog
):
    caplog.set_level(logging.INFO, logger="studio.moderation")
    items = make_items(4)
    items[0] = with_text(items[0], f"x {VIOLENCE}")
    await review(moderation_settings).run(items)

    summary = next(r.getMessage() for r in caplog.records if "Safety check summary" in r.message)
    assert re.search(r"Rejected: ([0-9]+)(?=/)", summary).group(1) == "1"
    assert "Passed: 3, Rejected: 1/4" in summary
    rejected = next(r.getMessage() for r in caplog.records if "Content rejected" in r.message)
    assert re.search(r"Reason: ([^|]+)", rejected).group(1).strip() == (
        "hard-blocked category violence/graphic"
    )


async def test_skip_list_may_name_the_niche(
    moderation_settings: ModerationSettings, make_items
):
    settings = moderation_settings.model_copy(update={"skip_categories": ["lifestyle"]})
    items = [dataclasses.replace(i, category="home", niche="lifestyle") for i in make_items(2)]
    report = await review(settings).run(items)
    assert {v.reason for v in report.verdicts.values()} == {"skipped category lifestyle"}


async def test_the_local_screen_still_rejects_hard_blocked_text_during_an_outage(
    openai_emu: OpenAIModerationEmulator, moderation_settings: ModerationSettings, make_items
):
    openai_emu.fail_always = 500
    items = make_items(2, tier="capa2")
    items[0] = with_text(items[0], "nsfw set with a schoolgirl theme")
    report = await review(moderation_settings).run(items)
    assert report.verdicts["p000"].status == "rejected"
    assert report.verdicts["p001"].status == "pending_review"


async def test_a_miscounted_moderation_answer_holds_pieces_for_review(
    openai_emu: OpenAIModerationEmulator, moderation_settings: ModerationSettings,
    make_items, stage_image,
):
    """Results are matched to inputs by position: a short answer must pass nothing."""
    openai_emu.miscount_always = -1
    items = make_items(4, images=False) + make_items(2, tier="capa2", prefix="q")

    report = await review(moderation_settings).run(items)

    assert {v.status for v in report.verdicts.values()} == {"pending_review"}
    assert len(report.verdicts) == 6


async def test_a_miscounted_image_answer_holds_only_that_piece(
    openai_emu: OpenAIModerationEmulator, moderation_settings: ModerationSettings,
    make_items, stage_image,
):
    items = make_items(3)
    items[0] = dataclasses.replace(items[0], image_path=stage_image("a", "MARKER_EMPTY"))
    openai_emu.image_miscount["MARKER_EMPTY"] = -1  # no result at all for that image
    report = await review(moderation_settings).run(items)
    assert [v.status for v in report.verdicts.values()] == ["pending_review", "passed", "passed"]
