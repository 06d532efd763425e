"""Turns a moderator's flags into a verdict per piece.

Sexual content involving minors is always rejected: no setting can turn that off.
A public (capa1) piece flagged sexual is never published as capa1.
"""

from __future__ import annotations

from studio.moderation.base import ModerationItem, ModerationScores
from studio.types import SafetyVerdict

ALWAYS_BLOCKED = frozenset({"sexual/minors"})
DEFAULT_HARD_BLOCKED = frozenset({"sexual/minors", "self-harm/intent", "violence/graphic"})


def verdict_for(
    item: ModerationItem,
    scores: ModerationScores,
    checked_by: str,
    hard_blocked: frozenset[str] = DEFAULT_HARD_BLOCKED,
    capa1_sexual_action: str = "retier",
) -> SafetyVerdict:
    blocked = sorted(set(scores.flagged_categories) & (hard_blocked | ALWAYS_BLOCKED))
    if blocked:
        return SafetyVerdict(
            piece_id=item.piece_id,
            status="rejected",
            tier=item.tier,
            reason=f"blocked category: {', '.join(blocked)}",
            categories=scores.flagged_categories,
            checked_by=checked_by,
        )
    if item.tier == "capa1" and "sexual" in scores.flagged_categories:
        if capa1_sexual_action == "reject":
            return SafetyVerdict(
                piece_id=item.piece_id,
                status="rejected",
                tier=item.tier,
                reason="tier mismatch: sexual content flagged on a public capa1 piece",
                categories=scores.flagged_categories,
                checked_by=checked_by,
            )
        return SafetyVerdict(
            piece_id=item.piece_id,
            status="retiered",
            tier="capa2",
            reason="tier mismatch: moved from capa1 to capa2",
            categories=scores.flagged_categories,
            checked_by=checked_by,
        )
    return SafetyVerdict(
        piece_id=item.piece_id,
        status="passed",
        tier=item.tier,
        categories=scores.flagged_categories,
        checked_by=checked_by,
    )
