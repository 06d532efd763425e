"""Step 1: plan the batch's pieces from the cached template library.

studio.templates plans which template (or custom prompt) and tier each piece gets; this
step then makes each piece the avatar's and the platform's:

- its image format: the platform the batch is for, and the aspect ratio and SDXL size
  of `studio.formats.image_format` (the request's format, which already holds the
  avatar's when the request gave none, over the platform's default);
- its prompt carries the avatar's trigger words first ("<trigger words>, <prompt>"),
  custom prompts too: a LoRA trained on a person draws that person only when its
  trained tokens are in the prompt. Words the prompt already holds are not repeated.
"""

from __future__ import annotations

import re

from prefect import task

from studio.catalog import template_library
from studio.formats import image_format
from studio.request import DEFAULT_PLATFORM, DEFAULT_TIER_SHARES, BatchRequest
from studio.templates import select_templates as plan
from studio.types import AvatarRef, PieceSpec


@task(name="select-templates", retries=2, retry_delay_seconds=1, timeout_seconds=30)
def select_templates(request: BatchRequest, avatar: AvatarRef, batch_id: str) -> list[PieceSpec]:
    shares = request.tier_distribution
    specs = plan(
        template_library(),
        batch_id=batch_id,
        avatar_niche=avatar.niche,
        num_pieces=request.num_pieces or len(request.custom_prompts or ()),
        tier_distribution=shares.as_dict() if shares is not None else DEFAULT_TIER_SHARES,
        platform=request.platform,
        seed=request.seed if request.seed is not None else batch_id,
        custom_prompts=request.custom_prompts,
        custom_tiers=request.custom_tiers,
    )
    return for_avatar_and_platform(specs, request, avatar)


def for_avatar_and_platform(
    specs: list[PieceSpec], request: BatchRequest, avatar: AvatarRef
) -> list[PieceSpec]:
    """`specs` with the batch's platform and image format, and the avatar's trigger words
    at the front of every prompt (see the module docstring)."""
    platform = request.platform or DEFAULT_PLATFORM
    shape = image_format(platform, request.format or avatar.format)
    return [
        spec.model_copy(
            update={
                "prompt": with_trigger_words(spec.prompt, avatar.trigger_words),
                "platform": platform,
                "aspect_ratio": shape.aspect_ratio,
                "width": shape.width,
                "height": shape.height,
            }
        )
        for spec in specs
    ]


def with_trigger_words(prompt: str, trigger_words: list[str]) -> str:
    """"<trigger words>, <prompt>": the words the prompt lacks (as whole words, any case),
    in the profile's order; the prompt as it is when it holds them all."""
    missing = [
        word
        for word in dict.fromkeys(w.strip() for w in trigger_words)
        if word and not _holds(prompt, word)
    ]
    if not missing:
        return prompt
    return ", ".join([*missing, prompt])


def _holds(prompt: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", prompt, re.IGNORECASE) is not None
