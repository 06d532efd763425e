"""Issue 18 part 5: a batch stays in its avatar's niche, and variables give every piece
its own prompt, the same each time the batch is planned."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from studio.settings import reload_settings
from studio.templates import (
    NicheWithoutTemplates,
    Template,
    TemplateLibrary,
    load_bundled_templates,
    select_templates,
    tier_counts,
)
from studio.types import Platform

DEFAULT = {"capa1": 0.6, "capa2": 0.3, "capa3": 0.1}
LIBRARY = TemplateLibrary()
NICHES = LIBRARY.niches()


def plan(library=LIBRARY, **overrides):
    args = {
        "batch_id": "7c1e0c55-1f2a-4d7e-9a61-5b0c1d2e3f40",
        "avatar_niche": "fitness",
        "num_pieces": 50,
        "tier_distribution": DEFAULT,
        "platform": None,
        "seed": 11,
    } | overrides
    return select_templates(library, **args)


def template(template_id, niche="fitness", tier="capa1", prompt="the avatar in a gym", **kw):
    return Template.model_validate(
        {
            "id": template_id,
            "niche": niche,
            "category": "c",
            "tier": tier,
            "platforms": ["instagram", "patreon"],
            "prompt": prompt,
            "hook_pattern": "Hi from {avatar_name} {platform_tag}",
            "description": "d",
        }
        | kw
    )


def test_the_issue_case_a_50_piece_fitness_batch_uses_fitness_templates_only():
    pieces = plan(tier_distribution=DEFAULT)
    assert Counter(p.tier for p in pieces) == {"capa1": 30, "capa2": 15, "capa3": 5}
    used = [LIBRARY.by_id(p.template_id) for p in pieces]
    assert {t.niche for t in used} == {"fitness"}
    assert [p.template_id for p in pieces if not p.template_id.startswith("fitness-")] == []


@pytest.mark.parametrize("num_pieces", [50, 100])
@pytest.mark.parametrize("niche", NICHES)
def test_every_niche_gives_all_distinct_prompts_and_stays_in_the_niche(niche, num_pieces):
    for platform in (None, Platform.INSTAGRAM, Platform.TIKTOK):
        pieces = plan(avatar_niche=niche, num_pieces=num_pieces, platform=platform)
        assert len(pieces) == num_pieces
        assert len({p.prompt for p in pieces}) == num_pieces, (niche, platform)
        assert {p.niche for p in pieces} == {niche}
        assert {LIBRARY.by_id(p.template_id).niche for p in pieces} == {niche}
        assert all("{" not in p.prompt and "the avatar" in p.prompt for p in pieces)


def test_a_100_piece_batch_spreads_over_the_niche_templates_and_values():
    pieces = plan(num_pieces=100)
    own = LIBRARY.for_niche("fitness")
    assert {p.template_id for p in pieces} == {t.id for t in own}
    # Values vary, not only the template: the shared {shot} list is used broadly.
    shots = Counter(
        value for p in pieces for value in LIBRARY.by_id(p.template_id).variables.get("shot", ())
        if value in p.prompt
    )
    assert len(shots) >= 6


def test_replanning_the_same_batch_gives_the_same_prompts():
    first = plan(num_pieces=100)
    again = plan(num_pieces=100, library=TemplateLibrary())
    assert [(p.piece_id, p.template_id, p.prompt) for p in first] == [
        (p.piece_id, p.template_id, p.prompt) for p in again
    ]


def test_another_batch_or_seed_fills_other_values():
    base = {p.prompt for p in plan()}
    assert len(base & {p.prompt for p in plan(batch_id="other-batch")}) < 10
    assert len(base & {p.prompt for p in plan(seed=12)}) < 10


def test_hooks_are_made_from_the_template_pattern():
    for piece in plan():
        template = LIBRARY.by_id(piece.template_id)
        assert piece.hook_pattern == template.hook_pattern
        piece.hook_pattern.format(avatar_name="Ava", niche="fitness", platform_tag="#fit")


def test_a_niche_missing_a_tier_uses_its_own_other_templates():
    only_public = TemplateLibrary(
        lambda: [t for t in load_bundled_templates() if t.tier == "capa1"]
    )
    pieces = plan(library=only_public, avatar_niche="food")
    assert Counter(p.tier for p in pieces) == tier_counts(50, DEFAULT)  # tiers kept
    assert {p.niche for p in pieces} == {"food"}
    assert len({p.prompt for p in pieces}) == 50


def test_a_spent_template_repeats_in_the_niche_rather_than_leaving_it():
    library = TemplateLibrary(
        lambda: [
            template("fitness-001", prompt="the avatar in a {gym}", variables={"gym": ["a", "b"]}),
            template("food-001", niche="food"),
        ]
    )
    pieces = plan(library=library, num_pieces=5, tier_distribution={"capa1": 1.0},
                  allow_other_niches=False)
    assert {p.template_id for p in pieces} == {"fitness-001"}
    prompts = Counter(p.prompt for p in pieces)
    assert set(prompts) == {"the avatar in a a", "the avatar in a b"}
    assert sorted(prompts.values()) == [2, 3]  # every combination before any repeat


def test_allowed_other_niches_are_borrowed_only_once_the_niche_is_spent():
    library = TemplateLibrary(
        lambda: [
            template("fitness-001", prompt="the avatar in a {gym}", variables={"gym": ["a", "b"]}),
            template("food-001", niche="food", prompt="the avatar at a {stall}",
                     variables={"stall": ["x", "y", "z"]}),
        ]
    )
    pieces = plan(library=library, num_pieces=4, tier_distribution={"capa1": 1.0},
                  allow_other_niches=True)
    assert Counter(p.template_id for p in pieces) == {"fitness-001": 2, "food-001": 2}
    assert len({p.prompt for p in pieces}) == 4


def test_a_niche_without_templates_is_refused_before_anything_is_planned():
    with pytest.raises(NicheWithoutTemplates) as error:
        plan(avatar_niche="Gardening", allow_other_niches=False)
    message = str(error.value)
    assert message.startswith("avatar_niche: no templates of niche 'gardening'")
    assert "studio templates import" in message and "TEMPLATES_ALLOW_OTHER_NICHES" in message
    assert "fitness" in message  # the niches there are


def test_two_templates_filling_to_the_same_text_give_distinct_prompts():
    same = {"prompt": "the avatar in a {gym}", "variables": {"gym": ["a", "b", "c"]}}
    library = TemplateLibrary(lambda: [template("fitness-001", **same),
                                       template("fitness-002", **same)])
    pieces = plan(library=library, num_pieces=6, tier_distribution={"capa1": 1.0})
    assert len({p.prompt for p in pieces}) == 3  # all the texts there are...
    pieces = plan(library=library, num_pieces=3, tier_distribution={"capa1": 1.0})
    assert len({p.prompt for p in pieces}) == 3  # ...and no repeat while one is left


@pytest.fixture
def setting(monkeypatch):
    def set_to(value: str) -> None:
        monkeypatch.setenv("TEMPLATES_ALLOW_OTHER_NICHES", value)
        reload_settings()

    yield set_to
    monkeypatch.delenv("TEMPLATES_ALLOW_OTHER_NICHES", raising=False)
    reload_settings()


def test_the_setting_is_the_default_and_off_by_default(setting):
    setting("false")
    with pytest.raises(NicheWithoutTemplates):
        plan(avatar_niche="gardening")
    setting("true")
    pieces = plan(avatar_niche="gardening", num_pieces=10)
    assert len(pieces) == 10
    # An explicit argument wins over the setting.
    with pytest.raises(NicheWithoutTemplates):
        plan(avatar_niche="gardening", allow_other_niches=False)


def test_the_setting_defaults_to_staying_in_the_niche(monkeypatch):
    monkeypatch.delenv("TEMPLATES_ALLOW_OTHER_NICHES", raising=False)
    assert reload_settings().templates_allow_other_niches is False


def test_piece_prompts_fill_placeholders_only_with_listed_values():
    for piece in plan(num_pieces=100, avatar_niche="travel"):
        t = LIBRARY.by_id(piece.template_id)
        pattern = re.escape(t.prompt)
        for name, values in t.variables.items():
            alternatives = "|".join(re.escape(v) for v in values)
            pattern = pattern.replace(re.escape("{" + name + "}"), f"(?:{alternatives})")
        assert re.fullmatch(pattern, piece.prompt), piece.prompt


def test_check_niche_lets_a_validation_step_refuse_first():
    from studio.templates import check_niche

    check_niche(LIBRARY, " Fitness ", allow_other_niches=False)  # has templates: fine
    check_niche(LIBRARY, "gardening", allow_other_niches=True)
    with pytest.raises(NicheWithoutTemplates, match="no templates of niche 'gardening'"):
        check_niche(LIBRARY, "gardening", allow_other_niches=False)
    with pytest.raises(NicheWithoutTemplates, match="the library has no templates at all"):
        check_niche(TemplateLibrary(list), "fitness", allow_other_niches=False)
