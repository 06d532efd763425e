"""The safety policy: which pieces are checked, and what a moderator's flags mean.

Rules (spec: "Safety Check Optimization", "Custom Prompt Injection", Common Issue 2):
- sexual/minors and the hard-blocked categories (HARD_BLOCKED_CATEGORIES, default also
  self-harm/intent and violence/graphic) reject a piece whatever its tier or the
  configuration; sexual/minors cannot be unblocked (see ModerationSettings);
- a public capa1 piece flagged sexual is rejected, or moved to CAPA1_RETIER_TO when
  CAPA1_SEXUAL_ACTION=retier: it never leaves as capa1; capa2/capa3 may be sexual;
- any other flagged category rejects the piece;
- only capa1 pieces from templates may go unchecked: SAFETY_CHECK_ENABLED=false, a
  category in SKIP_SAFETY_CHECK_CATEGORIES, or not drawn by SAFETY_CHECK_SAMPLE_RATE.
  Custom prompts and capa2/capa3 pieces are always checked. If a sampled piece is
  flagged, the pieces left out by sampling or category are checked too;
- every piece also goes through the free local screen (word lists): its hard-blocked
  flags always count, even if the moderator misses them or is down, and a piece left
  unchecked that it flags at all is sent to the moderator after all;
- when the moderator is unavailable (after its retries), the pieces it should have
  checked are held as pending_review: saved, never published, never passed unchecked.
It logs the lines the spec's diagnosis greps read: `Content rejected | Reason: ...` and
`Safety check summary | Passed: X, Rejected: Y/N`.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable

from studio.moderation.base import ModerationItem, ModerationScores, Moderator
from studio.moderation.settings import ALWAYS_BLOCKED, ModerationSettings
from studio.types import SafetyReport, SafetyVerdict

logger = logging.getLogger("studio.moderation")

# flagged categories a capa2/capa3 piece may carry; on capa1 they are a tier mismatch
# ("profanity" is the local moderator's word-list category)
ALLOWED_ABOVE_CAPA1 = frozenset({"sexual", "profanity"})
PUBLISHABLE = frozenset({"passed", "retiered", "skipped"})


def verdict_for(
    item: ModerationItem,
    scores: ModerationScores,
    checked_by: str,
    settings: ModerationSettings | None = None,
) -> SafetyVerdict:
    settings = settings or ModerationSettings()
    flagged = sorted(set(scores.flagged_categories))
    hard = set(settings.hard_blocked_categories) | {ALWAYS_BLOCKED}

    def verdict(status: str, reason: str | None = None, tier: str | None = None) -> SafetyVerdict:
        return SafetyVerdict(
            piece_id=item.piece_id, status=status, tier=tier or item.tier,  # type: ignore[arg-type]
            reason=reason, categories=flagged, checked_by=checked_by,
        )

    blocked = [c for c in flagged if c in hard]
    if blocked:
        return verdict("rejected", f"hard-blocked category {', '.join(blocked)}")
    others = [c for c in flagged if c not in ALLOWED_ABOVE_CAPA1]
    if others:
        return verdict("rejected", f"flagged category {', '.join(others)}")
    mismatch = [c for c in flagged if c in ALLOWED_ABOVE_CAPA1]
    if item.tier == "capa1" and mismatch:
        what = ", ".join(mismatch)
        if settings.capa1_sexual_action == "retier":
            return verdict(
                "retiered", f"tier mismatch: capa1 flagged {what}, moved to {settings.retier_to}",
                settings.retier_to,
            )
        return verdict("rejected", f"tier mismatch: capa1 flagged {what}")
    return verdict("passed")


def _draw_order(piece_id: str, seed: str) -> str:
    return hashlib.sha256(f"{seed}:{piece_id}".encode()).hexdigest()


def _skip_label(item: ModerationItem, skip: list[str]) -> str | None:
    """The template category or niche named in SKIP_SAFETY_CHECK_CATEGORIES, if any."""
    for label in (item.category, item.niche):
        if label and label.lower() in skip:
            return label.lower()
    return None


def plan(
    items: list[ModerationItem], settings: ModerationSettings, seed: str = ""
) -> tuple[list[ModerationItem], list[ModerationItem], dict[str, str]]:
    """Split into (checked now, deferred until a sample is flagged, skip reason per piece).

    Disabled pieces are skipped for good; category and sampling skips are deferred.
    """
    now: list[ModerationItem] = []
    deferred: list[ModerationItem] = []
    reasons: dict[str, str] = {}
    sampling: list[ModerationItem] = []
    for item in items:
        exempt = item.tier == "capa1" and not item.custom
        if not exempt:
            now.append(item)
        elif not settings.enabled:
            reasons[item.piece_id] = "safety check disabled for capa1 templates"
        elif skipped := _skip_label(item, settings.skip_categories):
            reasons[item.piece_id] = f"skipped category {skipped}"
            deferred.append(item)
        else:
            sampling.append(item)
    if settings.sample_rate >= 1:
        now.extend(sampling)
    else:
        ordered = sorted(sampling, key=lambda i: _draw_order(i.piece_id, seed))
        k = math.ceil(settings.sample_rate * len(ordered))
        now.extend(ordered[:k])
        for item in ordered[k:]:
            reasons[item.piece_id] = f"not sampled at rate {settings.sample_rate:g}"
            deferred.append(item)
    return now, deferred, reasons


class SafetyReview:
    """Runs the policy over one batch's items with a moderator and a free local screen."""

    def __init__(
        self,
        moderator: Moderator,
        settings: ModerationSettings,
        *,
        screen: Moderator | None = None,
    ) -> None:
        self.moderator = moderator
        self.settings = settings
        self.screen = screen

    def _hard(self, categories: Iterable[str]) -> list[str]:
        hard = set(self.settings.hard_blocked_categories) | {ALWAYS_BLOCKED}
        return sorted(c for c in categories if c in hard)

    async def _score(
        self,
        items: list[ModerationItem],
        report: SafetyReport,
        screened: dict[str, ModerationScores],
    ) -> list[SafetyVerdict]:
        if not items:
            return []
        try:
            scores = await self.moderator.score(items)
        except Exception as exc:  # outage after retries: hold, never pass unchecked
            logger.error(
                "Safety check unavailable | Error: %s | Pending review: %d",
                type(exc).__name__, len(items),
            )
            scores = {}
        verdicts = []
        for item in items:
            found = scores.get(item.piece_id)
            local = screened.get(item.piece_id)
            hard_local = self._hard(local.flagged_categories) if local else []
            if hard_local:
                if found is None:
                    found = ModerationScores(item.piece_id, hard_local)
                else:
                    found.flagged_categories = sorted(
                        set(found.flagged_categories) | set(hard_local)
                    )
            if found is None:
                verdicts.append(SafetyVerdict(
                    piece_id=item.piece_id, status="pending_review", tier=item.tier,
                    reason="moderation unavailable", checked_by=self.moderator.name,
                ))
            else:
                verdicts.append(
                    verdict_for(item, found, self.moderator.name, self.settings)
                )
        for verdict in verdicts:
            report.verdicts[verdict.piece_id] = verdict
        return verdicts

    async def _screen(self, items: list[ModerationItem]) -> dict[str, ModerationScores]:
        if not items or self.screen is None:
            return {}
        return await self.screen.score(items)

    async def run(
        self,
        items: list[ModerationItem],
        seed: str = "",
        rejected_before: dict[str, SafetyVerdict] | None = None,
    ) -> SafetyReport:
        """`rejected_before`: pieces rejected on their prompt before step 2 (no image to check);
        they count in this step's `Content rejected` and `Safety check summary` lines, so
        the spec's rejection-rate recipes see every rejection of the batch once."""
        report = SafetyReport()
        now, deferred, reasons = plan(items, self.settings, seed)
        screened = await self._screen(items)
        unchecked = [i for i in items if i.piece_id in reasons]
        flagged_locally = {
            i.piece_id for i in unchecked
            if i.piece_id in screened and screened[i.piece_id].flagged_categories
        }
        if flagged_locally:
            logger.warning(
                "Safety check escalated | Reason: local screen flagged %d unchecked pieces",
                len(flagged_locally),
            )
        now += [i for i in unchecked if i.piece_id in flagged_locally]
        deferred = [i for i in deferred if i.piece_id not in flagged_locally]

        first = await self._score(now, report, screened)
        sampled = {i.piece_id for i in now if i.tier == "capa1" and not i.custom}
        if deferred and any(
            v.piece_id in sampled and v.status in ("rejected", "retiered") for v in first
        ):
            logger.warning(
                "Safety check escalated | Reason: a sampled piece was flagged, checking %d more",
                len(deferred),
            )
            await self._score(deferred, report, screened)
        for item in items:
            if item.piece_id not in report.verdicts:
                report.verdicts[item.piece_id] = SafetyVerdict(
                    piece_id=item.piece_id, status="skipped", tier=item.tier,
                    reason=reasons.get(item.piece_id),
                    checked_by="none",
                )
        report.calls = int(getattr(self.moderator, "calls", 0) or 0)
        report.cost_usd = float(getattr(self.moderator, "cost_usd", 0.0) or 0.0)
        for piece_id, verdict in (rejected_before or {}).items():
            report.verdicts.setdefault(piece_id, verdict)
        log_outcome(report.verdicts.values(), len(report.verdicts), report)
        return report


def log_outcome(verdicts: Iterable[SafetyVerdict], total: int, report: SafetyReport) -> None:
    verdicts = list(verdicts)
    for verdict in verdicts:
        if verdict.status == "rejected":
            logger.warning(
                "Content rejected | Reason: %s | Piece: %s | Tier: %s",
                verdict.reason, verdict.piece_id, verdict.tier,
            )
        elif verdict.status == "retiered":
            logger.warning(
                "Content retiered | Reason: %s | Piece: %s", verdict.reason, verdict.piece_id
            )

    def count(*statuses: str) -> int:
        return sum(1 for v in verdicts if v.status in statuses)

    logger.info(
        "Safety check summary | Passed: %d, Rejected: %d/%d | Retiered: %d | "
        "Pending review: %d | Skipped: %d | Calls: %d | Cost: $%.4f",
        count(*PUBLISHABLE), count("rejected"), total, count("retiered"),
        count("pending_review"), count("skipped"), report.calls, report.cost_usd,
    )
