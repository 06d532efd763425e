"""Reading the model's answer into one hook per piece, repairing what can be repaired.

Structured output makes a well-formed answer the norm, but a gateway without it, a cut
answer (stop_reason max_tokens) or a model slip still happens. The envelope is parsed
strictly first, then with `json_repair` (code fences, prose around the JSON, trailing
commas, a truncated tail); entries are accepted in the shapes models actually produce.
Whatever is still missing, empty or not text is reported so the caller can fall back
for exactly those pieces.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import json_repair


@dataclass
class ParsedHooks:
    texts: dict[str, str] = field(default_factory=dict)
    repaired: bool = False
    missing: list[str] = field(default_factory=list)


def _load(raw: str) -> tuple[Any, bool]:
    try:
        return json.loads(raw), False
    except (json.JSONDecodeError, ValueError):
        pass
    try:
        return json_repair.repair_json(raw, return_objects=True), True
    except Exception:  # the repairer gives up on some garbage; treat as nothing parsed
        return None, True


def _entries(obj: Any) -> Iterable[tuple[Any, Any]]:
    """(piece_id, text) pairs from {"hooks": [...]}, {"hooks": {...}}, [...] or {id: text}."""
    if isinstance(obj, dict) and "hooks" in obj:
        obj = obj["hooks"]
    if isinstance(obj, list):
        for entry in obj:
            if isinstance(entry, dict):
                yield entry.get("piece_id", entry.get("id")), entry.get(
                    "text", entry.get("hook")
                )
    elif isinstance(obj, dict):
        yield from obj.items()


def clean_text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = " ".join(value.split()).strip().strip('"').strip()
    return text or None


def parse_hooks(raw: str, expected_ids: Iterable[str]) -> ParsedHooks:
    expected = list(expected_ids)
    wanted = set(expected)
    obj, repaired = _load(raw)
    parsed = ParsedHooks(repaired=repaired)
    for piece_id, value in _entries(obj):
        key = str(piece_id).strip() if piece_id is not None else None
        text = clean_text(value)
        if key in wanted and text and key not in parsed.texts:
            parsed.texts[key] = text
    parsed.missing = [pid for pid in expected if pid not in parsed.texts]
    return parsed
