"""The local moderator (word lists + better-profanity) under the same policy."""

from __future__ import annotations

from studio.moderation.base import ModerationItem
from studio.moderation.local import LocalModerator, flagged_categories
from studio.moderation.policy import SafetyReview
from studio.moderation.settings import ModerationSettings


def test_categories_from_the_word_lists():
    assert flagged_categories("Fresh look, new energy") == []
    assert flagged_categories("minor tweaks to the routine") == []
    assert flagged_categories("what the hell is this set") == ["profanity"]
    assert "sexual" in flagged_categories("an nsfw teaser")
    assert "sexual/minors" in flagged_categories("nsfw teaser with a teen")
    assert flagged_categories("a teen runner") == ["sexual/minors"]
    assert flagged_categories("portrait of a schoolgirl") == ["sexual/minors"]
    assert flagged_categories("kids these days", tier="capa1") == []
    assert flagged_categories("kids these days", tier="capa2") == ["sexual/minors"]
    assert "violence/graphic" in flagged_categories("gore makeup tutorial")


async def test_the_local_stand_in_applies_the_same_rules():
    settings = ModerationSettings(OPENAI_API_KEY="", CAPA1_SEXUAL_ACTION="retier")
    items = [
        ModerationItem("a", "capa1", False, "Fresh look, new energy"),
        ModerationItem("b", "capa1", False, "what the hell is this set"),
        ModerationItem("c", "capa2", False, "what the hell is this set"),
        ModerationItem("d", "capa3", True, "a set with a schoolgirl theme"),
    ]
    report = await SafetyReview(LocalModerator(), settings).run(items)
    status = {pid: (v.status, v.tier) for pid, v in report.verdicts.items()}
    assert status == {
        "a": ("passed", "capa1"),
        "b": ("retiered", "capa2"),
        "c": ("passed", "capa2"),
        "d": ("rejected", "capa3"),
    }
    assert report.calls == 0 and report.cost_usd == 0
    assert all(v.checked_by == "local" for v in report.verdicts.values())


def test_counts_are_not_read_as_leetspeak_letters():
    # the word list's leetspeak variants once turned "shot 4 of" into a listed word
    assert flagged_categories("Fresh look, new energy, shot 4 of the set.") == []
    assert "profanity" in flagged_categories("what the sh1t")
