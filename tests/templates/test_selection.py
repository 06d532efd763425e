"""select_templates and tier_counts: exact counts, no repeats, preferences, determinism."""

import random
import re
import uuid
from collections import Counter
from itertools import pairwise

import pytest

from studio.templates import (
    NicheWithoutTemplates,
    TemplateLibrary,
    load_bundled_templates,
    normalise_distribution,
    piece_id_for,
    select_templates,
    tier_counts,
)
from studio.types import TIERS, Platform

DEFAULT = {"capa1": 0.6, "capa2": 0.3, "capa3": 0.1}
BATCH = "6f1c1c1e-8a8e-4c1e-9d5e-3f1a2b3c4d5e"
LIBRARY = TemplateLibrary()


def select(library=LIBRARY, **overrides):
    args = {
        "batch_id": BATCH,
        "avatar_niche": "fitness",
        "num_pieces": 50,
        "tier_distribution": DEFAULT,
        "platform": "instagram",
        "seed": 7,
    } | overrides
    return select_templates(library, **args)


def random_distribution(rng):
    cuts = sorted(rng.random() for _ in range(2))
    ratios = [cuts[0], cuts[1] - cuts[0], 1 - cuts[1]]
    if rng.random() < 0.3:  # exercise zero ratios too
        ratios[rng.randrange(3)] = 0.0
        total = sum(ratios) or 1.0
        ratios = [r / total for r in ratios] if sum(ratios) else [1.0, 0.0, 0.0]
    return dict(zip(TIERS, ratios, strict=True))


# -- tier_counts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "dist", "expected"),
    [
        (50, DEFAULT, {"capa1": 30, "capa2": 15, "capa3": 5}),
        (10, DEFAULT, {"capa1": 6, "capa2": 3, "capa3": 1}),
        (1, DEFAULT, {"capa1": 1, "capa2": 0, "capa3": 0}),
        (7, DEFAULT, {"capa1": 4, "capa2": 2, "capa3": 1}),
        (3, {"capa1": 1 / 3, "capa2": 1 / 3, "capa3": 1 / 3}, {"capa1": 1, "capa2": 1, "capa3": 1}),
        (2, {"capa1": 1 / 3, "capa2": 1 / 3, "capa3": 1 / 3}, {"capa1": 1, "capa2": 1, "capa3": 0}),
        (500, {"capa1": 1.0}, {"capa1": 500, "capa2": 0, "capa3": 0}),
        (0, DEFAULT, {"capa1": 0, "capa2": 0, "capa3": 0}),
    ],
)
def test_tier_counts_examples(n, dist, expected):
    assert tier_counts(n, dist) == expected


def test_tier_counts_accepts_the_spec_ratio_keys():
    spec = {"capa1_ratio": 0.6, "capa2_ratio": 0.3, "capa3_ratio": 0.1}
    assert tier_counts(50, spec) == {"capa1": 30, "capa2": 15, "capa3": 5}


def test_tier_counts_property_sum_and_largest_remainder_bounds():
    rng = random.Random(2024)
    for _ in range(2000):
        n = rng.randint(1, 500)
        dist = random_distribution(rng)
        counts = tier_counts(n, dist)
        assert sum(counts.values()) == n
        for tier in TIERS:
            quota = dist[tier] * n
            # Largest remainder: every count is the floor or the ceiling of its quota.
            assert quota - 1 - 1e-6 < counts[tier] < quota + 1 + 1e-6
            if dist[tier] == 0:
                assert counts[tier] == 0


@pytest.mark.parametrize(
    ("dist", "match"),
    [
        ({"capa1": 0.5, "capa2": 0.3}, "sum to 1"),
        ({"capa1": 1.2, "capa2": -0.2}, "capa2 must be a ratio >= 0"),
        ({"capa1": 0.5, "capa4": 0.5}, "unknown tier 'capa4'"),
        ({"capa1": float("nan"), "capa2": 1.0}, "ratio >= 0"),
        ({}, "sum to 1"),
    ],
)
def test_bad_distributions_are_refused_with_the_field_named(dist, match):
    with pytest.raises(ValueError, match="tier_distribution") as error:
        tier_counts(10, dist)
    assert error.match(match)


def test_ratios_within_tolerance_are_accepted():
    assert normalise_distribution({"capa1": 0.6, "capa2": 0.3, "capa3": 0.1 + 5e-7})
    with pytest.raises(ValueError):
        normalise_distribution({"capa1": 0.6, "capa2": 0.3, "capa3": 0.1 + 5e-6})


def test_negative_piece_count_is_refused():
    with pytest.raises(ValueError, match="num_pieces"):
        tier_counts(-1, DEFAULT)


# -- selection -------------------------------------------------------------------------


def test_default_batch_has_exact_tiers_and_no_repeats():
    pieces = select()
    assert Counter(p.tier for p in pieces) == {"capa1": 30, "capa2": 15, "capa3": 5}
    assert len({p.prompt for p in pieces}) == 50
    assert {p.niche for p in pieces} == {"fitness"}
    assert len({p.template_id for p in pieces}) == len(LIBRARY.for_niche("fitness"))
    assert [p.index for p in pieces] == list(range(50))
    assert all(p.batch_id == BATCH and not p.custom for p in pieces)


def test_pieces_carry_their_template_fields_and_tier():
    for piece in select():
        template = LIBRARY.by_id(piece.template_id)
        assert piece.tier == template.tier
        assert (piece.category, piece.niche, piece.hook_pattern) == (
            template.category,
            template.niche,
            template.hook_pattern,
        )
        assert filled_from(template, piece.prompt)


def filled_from(template, prompt):
    """Whether `prompt` is the template's prompt with each placeholder set to one value."""
    pattern = re.escape(template.prompt)
    for name, values in template.variables.items():
        choices = "|".join(re.escape(v) for v in values)
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?:{choices})")
    return re.fullmatch(pattern, prompt) is not None


def test_property_exact_counts_in_the_niche_templates_spread_prompts_distinct():
    rng = random.Random(99)
    niches = LIBRARY.niches()
    for case in range(150):
        n = rng.randint(1, 120)
        dist = random_distribution(rng)
        niche = rng.choice(niches)
        per_tier = Counter(t.tier for t in LIBRARY.for_niche(niche))
        pieces = select(
            num_pieces=n,
            tier_distribution=dist,
            avatar_niche=niche,
            platform=rng.choice([None, *Platform]),
            seed=case,
        )
        counts = tier_counts(n, dist)
        assert Counter(p.tier for p in pieces) == +Counter(counts)
        assert {p.niche for p in pieces} <= {niche}
        assert len({p.prompt for p in pieces}) == n
        for tier in TIERS:
            ids = [p.template_id for p in pieces if p.tier == tier]
            uses = Counter(ids).values()
            if counts[tier] <= per_tier[tier]:
                assert len(set(ids)) == len(ids)
            elif uses:
                # Past the niche's templates, the least-used template is used again.
                assert len(set(ids)) == per_tier[tier]
                assert max(uses) - min(uses) <= 1


def test_large_batch_uses_every_combination_before_repeating_a_prompt():
    pieces = select(num_pieces=500, tier_distribution={"capa1": 1.0})
    own = [t for t in LIBRARY.for_niche("fitness") if t.tier == "capa1"]
    assert {p.template_id for p in pieces} == {t.id for t in own}
    assert len({p.prompt for p in pieces}) == min(500, sum(t.combinations for t in own))


def test_own_niche_is_used_before_widening():
    pieces = select(avatar_niche="travel", num_pieces=50)
    own = [t for t in LIBRARY.for_niche("travel")]
    counts = tier_counts(50, DEFAULT)
    for tier in TIERS:
        own_in_tier = {t.id for t in own if t.tier == tier}
        chosen = {p.template_id for p in pieces if p.tier == tier}
        assert len(chosen & own_in_tier) == min(counts[tier], len(own_in_tier))


def test_small_batch_stays_within_the_niche():
    pieces = select(avatar_niche="food", num_pieces=10)
    assert {p.niche for p in pieces} == {"food"}


def test_platform_templates_come_first_within_the_niche():
    for seed in range(20):
        pieces = select(
            avatar_niche="fitness",
            num_pieces=5,
            platform="tiktok",
            seed=seed,
            tier_distribution={"capa1": 1.0},
        )
        chosen = [LIBRARY.by_id(p.template_id) for p in pieces]
        assert all(t.niche == "fitness" and t.supports("tiktok") for t in chosen)


def test_unknown_niche_is_refused_unless_other_niches_are_allowed():
    with pytest.raises(NicheWithoutTemplates, match="avatar_niche: no templates of niche"):
        select(avatar_niche="gardening", num_pieces=20, allow_other_niches=False)
    pieces = select(avatar_niche="gardening", num_pieces=20, allow_other_niches=True)
    assert Counter(p.tier for p in pieces) == tier_counts(20, DEFAULT)
    assert len({p.template_id for p in pieces}) == 20


def test_same_seed_and_batch_give_the_same_plan():
    assert select() == select()
    assert select() == select(library=TemplateLibrary())  # no hidden state in the library


def test_seed_or_batch_change_the_plan():
    base = [p.template_id for p in select()]
    assert [p.template_id for p in select(seed=8)] != base
    other = str(uuid.uuid4())
    assert [p.template_id for p in select(batch_id=other)] != base


def test_plan_does_not_depend_on_loader_order():
    reversed_library = TemplateLibrary(lambda: list(reversed(load_bundled_templates())))
    assert select(library=reversed_library) == select()


def test_tiers_are_interleaved_not_grouped():
    tiers = [p.tier for p in select()]
    changes = sum(1 for a, b in pairwise(tiers) if a != b)
    assert changes > 2


def test_piece_ids_are_stable_uuid5_per_batch_and_index():
    pieces = select()
    assert len({p.piece_id for p in pieces}) == 50
    for p in pieces:
        assert p.piece_id == str(uuid.uuid5(uuid.UUID(BATCH), f"{BATCH}:{p.index}"))
    assert piece_id_for("nightly-2024-01-01", 3) == str(
        uuid.uuid5(uuid.NAMESPACE_URL, "nightly-2024-01-01:3")
    )
    assert select(batch_id="nightly-2024-01-01", num_pieces=2)[1].piece_id == piece_id_for(
        "nightly-2024-01-01", 1
    )


def test_missing_tier_falls_back_to_other_templates_but_keeps_the_tier():
    only_public = TemplateLibrary(
        lambda: [t for t in load_bundled_templates() if t.tier == "capa1"]
    )
    pieces = select(library=only_public, num_pieces=10)
    assert Counter(p.tier for p in pieces) == {"capa1": 6, "capa2": 3, "capa3": 1}
    assert len({p.template_id for p in pieces}) == 10


def test_empty_library_is_refused():
    with pytest.raises(ValueError, match="template library is empty"):
        select(library=TemplateLibrary(list))


def test_zero_pieces_plan_nothing():
    assert select(num_pieces=0) == []


def test_unknown_platform_is_refused():
    with pytest.raises(ValueError, match="platform: unknown platform 'myspace'"):
        select(platform="myspace")


def test_platform_enum_and_none_are_accepted():
    assert len(select(platform=Platform.ONLYFANS, num_pieces=5)) == 5
    assert len(select(platform=None, num_pieces=5)) == 5


def test_repeated_batches_of_one_niche_hit_the_cache():
    lib = TemplateLibrary()
    for i in range(20):
        select(library=lib, batch_id=f"batch-{i}", num_pieces=50)
    assert lib.cache_stats()["hit_rate_percent"] >= 90


# -- custom prompts ---------------------------------------------------------------------

PROMPTS = ["close-up portrait, studio lighting", "athletic pose, gym environment"]


def test_custom_prompts_default_to_capa1_and_bypass_templates():
    pieces = select(num_pieces=2, custom_prompts=PROMPTS)
    assert [p.prompt for p in pieces] == PROMPTS
    assert [p.tier for p in pieces] == ["capa1", "capa1"]
    assert all(p.custom and p.template_id is None and p.hook_pattern is None for p in pieces)
    assert [p.index for p in pieces] == [0, 1]
    assert pieces[0].piece_id == piece_id_for(BATCH, 0)
    assert {p.niche for p in pieces} == {"fitness"}


def test_custom_tiers_apply_in_order():
    pieces = select(num_pieces=2, custom_prompts=PROMPTS, custom_tiers=["capa3", "capa2"])
    assert [p.tier for p in pieces] == ["capa3", "capa2"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_pieces": 3, "custom_prompts": PROMPTS}, "custom_prompts: 2 prompts"),
        (
            {"num_pieces": 2, "custom_prompts": PROMPTS, "custom_tiers": ["capa1"]},
            "custom_tiers: 1",
        ),
        (
            {"num_pieces": 2, "custom_prompts": PROMPTS, "custom_tiers": ["capa1", "gold"]},
            r"custom_tiers\[1\]: unknown tier 'gold'",
        ),
        (
            {"num_pieces": 2, "custom_prompts": ["ok", "  "]},
            r"custom_prompts\[1\]: the prompt is empty",
        ),
        ({"num_pieces": 2, "custom_tiers": ["capa1", "capa1"]}, "only valid together"),
    ],
)
def test_bad_custom_input_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        select(**kwargs)
