"""The request the hook writer sends: a cached shared prefix and a small per-group tail.

Layout (order matters for prompt caching, which caches a prefix up to a marked block):

1. system block 1: the instructions, identical for every call of every batch;
2. system block 2: the template catalogue (one line per template), marked with
   `cache_control` so groups 2..n of a batch (and later batches) read it from the cache;
3. the user message: avatar, platform, and one line per piece, `piece_id: <id> | ...`.

The emulator in tests/emulators/anthropic_api.py relies on the `piece_id: <id>` lines.
Each piece's image prompt is cut to HOOK_PROMPT_MAX_TOKENS tokens (spec: Common Issue 3,
"Prompt too long"); tokens are estimated at four characters each, which over-counts
for English and so errs on the short side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from studio.hooks.platforms import HOOK_STYLES, style_for
from studio.types import AvatarRef, PieceSpec, Platform

CHARS_PER_TOKEN = 4

INSTRUCTIONS = """You write hooks: the one- or two-line captions that open a social post \
for an AI avatar's content. Each hook must make a viewer stop scrolling, fit the \
avatar's niche and the piece's template, and stay safe for work: no explicit words, \
no claims about real people, no promises of meetings, no prices.

You receive a list of pieces, one per line, each starting with `piece_id: <id>`.
Answer with one JSON object and nothing else:
{"hooks": [{"piece_id": "<id>", "text": "<hook>"}, ...]}
Write exactly one hook per piece_id, copying each id verbatim. Never merge or skip ids.

Platform rules (maximum characters, maximum hashtags, tone):
""" + "\n".join(
    f"- {platform.value}: {style.max_chars} chars, {style.max_hashtags} hashtags, {style.tone}"
    for platform, style in HOOK_STYLES.items()
)

OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "hooks": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "piece_id": {"type": "string"},
                    "text": {"type": "string"},
                },
                "required": ["piece_id", "text"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["hooks"],
    "additionalProperties": False,
}


def estimate_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def truncate_tokens(text: str, max_tokens: int) -> str:
    """Keep at most `max_tokens` (estimated) tokens, cut at a word boundary."""
    text = " ".join(text.split())
    limit = max_tokens * CHARS_PER_TOKEN
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return (cut[: cut.rfind(" ")] if " " in cut else cut).rstrip() + " …"


def catalogue_text(
    specs: Sequence[PieceSpec], catalog: Mapping[str, str] | None = None
) -> str:
    """The template catalogue block; sorted so it is byte-identical across calls.

    With a library catalogue it is the same for every batch (best for caching); without
    one it is built from the batch's own templates, so it is shared by the batch's calls.
    """
    entries: dict[str, str] = dict(catalog or {})
    if not entries:
        for spec in specs:
            if spec.template_id and spec.template_id not in entries:
                parts = [f"category={spec.category or 'general'}"]
                if spec.hook_pattern:
                    parts.append(f"hook pattern={spec.hook_pattern}")
                entries[spec.template_id] = ", ".join(parts)
    lines = [f"- {tid}: {' '.join(desc.split())}" for tid, desc in sorted(entries.items())]
    return "Template catalogue (id: description):\n" + ("\n".join(lines) or "- none")


def piece_line(spec: PieceSpec, prompt_max_tokens: int) -> str:
    template = spec.template_id or "custom"
    prompt = truncate_tokens(spec.prompt, prompt_max_tokens)
    pattern = f" | pattern: {spec.hook_pattern}" if spec.hook_pattern else ""
    return (
        f"piece_id: {spec.piece_id} | template: {template} | category: "
        f"{spec.category or 'general'} | tier: {spec.tier}{pattern} | image: {prompt}"
    )


def user_text(
    group: Sequence[PieceSpec], avatar: AvatarRef, platform: Platform, prompt_max_tokens: int
) -> str:
    style = style_for(platform)
    header = (
        f"Avatar: {avatar.name} (niche: {avatar.niche}). Platform: {Platform(platform).value}"
        f" (max {style.max_chars} chars, {style.max_hashtags} hashtags).\n"
        f"Write {len(group)} hooks, one per piece:\n"
    )
    return header + "\n".join(piece_line(spec, prompt_max_tokens) for spec in group)


def message_params(
    group: Sequence[PieceSpec],
    avatar: AvatarRef,
    platform: Platform,
    *,
    catalogue: str,
    model: str,
    max_output_tokens: int,
    prompt_max_tokens: int,
    structured: bool = True,
) -> dict[str, Any]:
    """Keyword arguments for `messages.create` (also the `params` of a batch request)."""
    params: dict[str, Any] = {
        "model": model,
        "max_tokens": max_output_tokens,
        "system": [
            {"type": "text", "text": INSTRUCTIONS},
            {"type": "text", "text": catalogue, "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {"role": "user", "content": user_text(group, avatar, platform, prompt_max_tokens)}
        ],
    }
    if structured:
        params["output_config"] = {"format": {"type": "json_schema", "schema": OUTPUT_SCHEMA}}
    return params
