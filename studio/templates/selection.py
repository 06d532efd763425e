"""Step 1 of a batch: turn a tier distribution into a planned list of `PieceSpec`.

Everything here is a pure function of its arguments (and the library's contents), so a
retried or re-run step plans exactly the same pieces with the same `piece_id`s and the
same filled prompts, and the later steps can key their work by those ids. (The one
setting read, TEMPLATES_ALLOW_OTHER_NICHES, is only a default for an argument.)
"""

from __future__ import annotations

import math
import random
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence

from studio.settings import get_settings
from studio.templates.library import TemplateLibrary
from studio.templates.models import Template
from studio.types import TIERS, PieceSpec, Platform, Tier

#: How far the ratios may sum away from 1 (the batch config's tolerance).
RATIO_TOLERANCE = 1e-6


def normalise_distribution(distribution: Mapping[str, float]) -> dict[Tier, float]:
    """Ratios keyed by tier; accepts `capa1` or the spec's `capa1_ratio` spelling.

    Missing tiers count as 0. Raises ValueError for unknown keys, negative ratios or
    ratios that do not sum to 1.
    """
    ratios: dict[Tier, float] = dict.fromkeys(TIERS, 0.0)
    for key, value in distribution.items():
        tier = key.removesuffix("_ratio")
        if tier not in ratios:
            raise ValueError(f"tier_distribution: unknown tier {key!r}; use {', '.join(TIERS)}")
        ratio = float(value)
        if not math.isfinite(ratio) or ratio < 0:
            raise ValueError(f"tier_distribution: {key} must be a ratio >= 0, got {value!r}")
        ratios[tier] += ratio  # type: ignore[index]
    total = sum(ratios.values())
    if abs(total - 1.0) > RATIO_TOLERANCE:
        raise ValueError(
            f"tier_distribution: ratios must sum to 1, they sum to {total:g}; "
            "e.g. capa1=0.6, capa2=0.3, capa3=0.1"
        )
    return ratios


def tier_counts(num_pieces: int, distribution: Mapping[str, float]) -> dict[Tier, int]:
    """Exact piece counts per tier by the largest-remainder method; they sum to num_pieces.

    50 pieces at 0.6/0.3/0.1 give 30/15/5. Leftover pieces go to the largest fractional
    parts, ties to the larger ratio and then to the more public tier.
    """
    if num_pieces < 0:
        raise ValueError(f"num_pieces must be >= 0, got {num_pieces}")
    ratios = normalise_distribution(distribution)
    quotas = {tier: ratios[tier] * num_pieces for tier in TIERS}
    # The epsilon keeps 0.6 * 50 = 29.999999999999996 from flooring to 29.
    counts = {tier: min(num_pieces, math.floor(quotas[tier] + 1e-9)) for tier in TIERS}
    leftover = num_pieces - sum(counts.values())
    order = sorted(
        TIERS,
        key=lambda t: (
            -(quotas[t] - counts[t]) if ratios[t] > 0 else 1.0,
            -ratios[t],
            TIERS.index(t),
        ),
    )
    for i in range(max(leftover, 0)):
        counts[order[i % len(order)]] += 1
    return counts


def piece_id_for(batch_id: str, index: int) -> str:
    """A piece id that is the same every time the batch is planned."""
    try:
        namespace = uuid.UUID(batch_id)
    except ValueError:
        namespace = uuid.NAMESPACE_URL
    return str(uuid.uuid5(namespace, f"{batch_id}:{index}"))


class NicheWithoutTemplates(ValueError):
    """The avatar's niche has no template and the batch may not borrow another niche's."""


def check_niche(
    library: TemplateLibrary, avatar_niche: str, *, allow_other_niches: bool | None = None
) -> None:
    """Raise NicheWithoutTemplates when a batch for `avatar_niche` could not be planned.

    `select_templates` calls it; a validation step can call it too, to refuse such a
    request before a run starts (None: the TEMPLATES_ALLOW_OTHER_NICHES setting).
    """
    if allow_other_niches is None:
        allow_other_niches = get_settings().templates_allow_other_niches
    niche = avatar_niche.strip().lower()
    if allow_other_niches or library.for_niche(niche):
        return
    known = ", ".join(library.niches()) or "no templates at all"
    raise NicheWithoutTemplates(
        f"avatar_niche: no templates of niche {niche!r} (the library has {known}); "
        "add some with `studio templates import FILE.yaml`, or set "
        "TEMPLATES_ALLOW_OTHER_NICHES=true to borrow other niches' templates"
    )


def select_templates(
    library: TemplateLibrary,
    *,
    batch_id: str,
    avatar_niche: str,
    num_pieces: int,
    tier_distribution: Mapping[str, float],
    platform: Platform | str | None = None,
    seed: int | str | None = None,
    custom_prompts: Sequence[str] | None = None,
    custom_tiers: Sequence[str] | None = None,
    allow_other_niches: bool | None = None,
) -> list[PieceSpec]:
    """Plan the pieces of a batch.

    Template pieces: exact tier counts (`tier_counts`), from templates of the avatar's
    niche only (those made for `platform` before the others). A tier the niche has no
    template for is planned from the niche's other templates (the piece keeps its tier).
    Each use of a template fills its placeholders with another combination of values,
    so prompts do not repeat while the templates' combinations last; the least-used
    template with a fresh combination goes next, and only when every combination is
    spent does a prompt repeat. The order is shuffled so tiers interleave. Same
    (seed, batch_id) and library -> same plan, prompts included.

    `allow_other_niches` (None: the TEMPLATES_ALLOW_OTHER_NICHES setting, default off)
    lets a batch borrow templates of other niches, and only where its own niche has no
    template of the tier or none with a fresh combination left. Off, a niche without
    templates is refused (NicheWithoutTemplates) before anything is planned.

    Custom prompts bypass templates: one piece per prompt, in the given order, tier from
    `custom_tiers` or capa1 (the spec: "No tier classification (defaults to capa1)").
    """
    niche = avatar_niche.strip().lower()
    wanted_platform = _parse_platform(platform)
    if custom_prompts is not None:
        return _custom_pieces(batch_id, niche, num_pieces, custom_prompts, custom_tiers)
    if custom_tiers is not None:
        raise ValueError("custom_tiers: only valid together with custom_prompts")

    counts = tier_counts(num_pieces, tier_distribution)
    if num_pieces == 0:
        return []
    if allow_other_niches is None:
        allow_other_niches = get_settings().templates_allow_other_niches
    everything = library.all_templates()
    if not everything:
        raise ValueError("the template library is empty; run `studio init` to load it")
    check_niche(library, niche, allow_other_niches=allow_other_niches)
    own_niche = library.for_niche(niche)
    own_ids = {t.id for t in own_niche}

    rng = random.Random(f"{seed}:{batch_id}")
    variations = _Variations(f"{seed}:{batch_id}")
    used: Counter[str] = Counter()
    planned: list[tuple[Tier, Template, str]] = []
    for tier in TIERS:
        if allow_other_niches:
            pool = [t for t in everything if t.tier == tier] or list(everything)
        else:
            pool = [t for t in own_niche if t.tier == tier] or list(own_niche)
        ranked = _rank(pool, own_ids, wanted_platform, rng)
        for _ in range(counts[tier]):
            choice = min(
                range(len(ranked)),
                key=lambda i: (
                    variations.spent(ranked[i]),
                    ranked[i].id not in own_ids,
                    used[ranked[i].id],
                    i,
                ),
            )
            template = ranked[choice]
            used[template.id] += 1
            planned.append((tier, template, variations.next_prompt(template)))
    rng.shuffle(planned)

    return [
        PieceSpec(
            piece_id=piece_id_for(batch_id, index),
            batch_id=batch_id,
            index=index,
            prompt=prompt,
            tier=tier,
            template_id=template.id,
            category=template.category,
            niche=template.niche,
            hook_pattern=template.hook_pattern,
        )
        for index, (tier, template, prompt) in enumerate(planned)
    ]


class _Variations:
    """Which combination of values each use of a template gets, within one batch.

    Per template, the combinations are walked in an order drawn from (seed, batch_id,
    template id): a random start and a random stride coprime with their number, so
    every combination comes once before any repeats and consecutive uses differ in
    several values, not only the last. A combination whose prompt the batch already has
    (two templates can fill to the same text) is skipped.
    """

    def __init__(self, key: str) -> None:
        self._key = key
        self._walks: dict[str, tuple[int, int]] = {}
        self._cursor: Counter[str] = Counter()
        self._prompts: set[str] = set()

    def spent(self, template: Template) -> bool:
        return self._cursor[template.id] >= template.combinations

    def next_prompt(self, template: Template) -> str:
        total = template.combinations
        start, stride = self._walk(template, total)
        while self._cursor[template.id] < total:
            number = (start + self._cursor[template.id] * stride) % total
            self._cursor[template.id] += 1
            prompt = template.render(template.choice(number))
            if prompt not in self._prompts:
                self._prompts.add(prompt)
                return prompt
        # Every combination used: repeat them in the same order.
        number = (start + self._cursor[template.id] * stride) % total
        self._cursor[template.id] += 1
        return template.render(template.choice(number))

    def _walk(self, template: Template, total: int) -> tuple[int, int]:
        if template.id not in self._walks:
            rng = random.Random(f"{self._key}:{template.id}")
            start = rng.randrange(total)
            stride = 1
            if total > 2:
                stride = rng.randrange(1, total)
                while math.gcd(stride, total) != 1:
                    stride = stride % (total - 1) + 1
            self._walks[template.id] = (start, stride)
        return self._walks[template.id]


def _rank(
    pool: list[Template], own_niche: set[str], platform: Platform | None, rng: random.Random
) -> list[Template]:
    """Preference order: niche+platform, niche, other+platform, other; shuffled within."""
    groups: list[list[Template]] = [[], [], [], []]
    for template in sorted(pool, key=lambda t: t.id):  # loader order must not matter
        other = template.id not in own_niche
        off_platform = platform is not None and not template.supports(platform)
        groups[2 * other + off_platform].append(template)
    ranked: list[Template] = []
    for group in groups:
        rng.shuffle(group)
        ranked.extend(group)
    return ranked


def _parse_platform(platform: Platform | str | None) -> Platform | None:
    if platform is None:
        return None
    try:
        return Platform(platform)
    except ValueError:
        allowed = ", ".join(p.value for p in Platform)
        raise ValueError(f"platform: unknown platform {platform!r}; use one of {allowed}") from None


def _custom_pieces(
    batch_id: str,
    niche: str,
    num_pieces: int,
    prompts: Sequence[str],
    tiers: Sequence[str] | None,
) -> list[PieceSpec]:
    if len(prompts) != num_pieces:
        raise ValueError(
            f"custom_prompts: {len(prompts)} prompts given for num_pieces={num_pieces}; "
            "give one prompt per piece"
        )
    if tiers is not None and len(tiers) != len(prompts):
        raise ValueError(
            f"custom_tiers: {len(tiers)} tiers given for {len(prompts)} custom prompts; "
            "give one tier per prompt"
        )
    pieces = []
    for index, prompt in enumerate(prompts):
        tier = tiers[index] if tiers is not None else "capa1"
        if tier not in TIERS:
            raise ValueError(
                f"custom_tiers[{index}]: unknown tier {tier!r}; use {', '.join(TIERS)}"
            )
        if not prompt.strip():
            raise ValueError(f"custom_prompts[{index}]: the prompt is empty")
        pieces.append(
            PieceSpec(
                piece_id=piece_id_for(batch_id, index),
                batch_id=batch_id,
                index=index,
                prompt=prompt.strip(),
                tier=tier,  # type: ignore[arg-type]
                niche=niche,
                custom=True,
            )
        )
    return pieces
