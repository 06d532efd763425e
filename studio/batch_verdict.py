"""Whether a batch delivered enough, and what went wrong with the pieces that did not.

One rule for the batch's row, its Prefect state, its log line and its event. The
threshold is compared in exact fractions: in floating point 16/20 at a ratio of 0.8
read as a failure (`4/20 <= 1 - 0.8` is false) while Prefect said Completed.
"""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction

from studio.types import PieceOutcome, PieceStatus

#: how many distinct reasons a summary names
MAIN_REASONS = 3
REASON_CHARS = 160
#: a reason's "piece 7: " prefix, dropped so that equal reasons are counted together
_PIECE_PREFIX = re.compile(r"^piece \S+: ")


def meets_minimum(delivered: int, requested: int, min_success_ratio: float) -> bool:
    """delivered / requested >= min_success_ratio, exactly (0.8 is read as 4/5)."""
    if requested <= 0:
        return True
    return Fraction(delivered) >= Fraction(str(min_success_ratio)) * requested


def failed_step(outcome: PieceOutcome) -> str:
    """The step a failed piece stopped at: no image, or an image that was not stored."""
    return "image generation" if outcome.provider is None else "storage upload"


def failure_summary(pieces: list[PieceOutcome]) -> str:
    """E.g. "3 failed at image generation (2x ComfyUI timed out; 1x ...)"; "" if none."""
    by_step: dict[str, Counter[str]] = {}
    for piece in pieces:
        if piece.status != PieceStatus.FAILED:
            continue
        reason = _PIECE_PREFIX.sub("", " ".join((piece.reason or "unknown").split()))
        reason = reason[:REASON_CHARS]
        by_step.setdefault(failed_step(piece), Counter())[reason] += 1
    parts = []
    for step, reasons in by_step.items():
        named = "; ".join(f"{n}x {reason}" for reason, n in reasons.most_common(MAIN_REASONS))
        more = len(reasons) - MAIN_REASONS
        if more > 0:
            named += f"; {more} other reason{'s' if more > 1 else ''}"
        parts.append(f"{sum(reasons.values())} failed at {step} ({named})")
    return ", ".join(parts)
