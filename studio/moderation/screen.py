"""Screen prompts before an image is bought.

Why: the safety step (step 4) checks a piece after its image was generated, so on its
own a custom prompt in a hard-blocked category would be sent to the image provider,
paid for, and only then rejected. This screen runs on the prompt text alone, before step 2:

- every prompt (custom and template, the avatar and niche filled in) goes through the
  free local rule-based screen; its hard-blocked flags (HARD_BLOCKED_CATEGORIES, and
  `sexual/minors` whatever the configuration) reject the piece;
- custom prompts also go to the configured moderator's text moderation (OpenAI's when
  OPENAI_API_KEY is set, the local rules otherwise), and any verdict of the policy
  (`studio.moderation.policy.verdict_for`) that rejects the piece rejects it now. A
  verdict that would only re-tier the piece does not stop it: step 4 decides that with
  the image and the hook;
- a moderator outage does not stop anything here: the local hard-blocked flags still
  count, and step 4 checks the piece again (and holds it for review if still down).

A rejected piece never reaches an image provider: it costs no image, no ledger row for
an image, and ends `rejected` with the policy's reason naming the category. Its
`Content rejected` line is logged by the safety step with the batch's other verdicts
(`SafetyReview.run(rejected_before=...)`), so the spec's summary line counts it once.
"""

from __future__ import annotations

import asyncio
import logging

from studio.moderation.base import ModerationItem, ModerationScores, Moderator
from studio.moderation.local import LocalModerator
from studio.moderation.policy import verdict_for
from studio.moderation.settings import ALWAYS_BLOCKED, ModerationSettings
from studio.types import PieceSpec, SafetyVerdict

logger = logging.getLogger("studio.moderation")

#: the suffix of a screened piece's reason: says the image was never generated
SCREENED = "prompt screened before image generation"
#: the moderator's time at screening, under the screen-prompts task's 120 s timeout: a
#: slow moderator is treated as an outage here (step 4 checks again), never fails a batch
MODERATOR_SECONDS = 90.0


def prompt_items(specs: list[PieceSpec]) -> list[ModerationItem]:
    """The prompt of each piece as a text-only moderation item (no image exists yet)."""
    return [
        ModerationItem(
            piece_id=spec.piece_id,
            tier=spec.tier,
            custom=spec.custom,
            text=spec.prompt,
            category=spec.category,
            niche=spec.niche,
        )
        for spec in specs
    ]


class PromptScreen:
    """Rejects, before generation, the prompts the safety policy would reject."""

    def __init__(
        self,
        moderator: Moderator,
        settings: ModerationSettings,
        *,
        local: Moderator | None = None,
    ) -> None:
        self.moderator = moderator
        self.settings = settings
        self.local = local or LocalModerator()

    def _hard(self, categories: list[str]) -> list[str]:
        hard = set(self.settings.hard_blocked_categories) | {ALWAYS_BLOCKED}
        return sorted(c for c in categories if c in hard)

    async def _moderated(self, items: list[ModerationItem]) -> dict[str, ModerationScores]:
        """The moderator's flags for the custom prompts; {} on an outage (step 4 rechecks)."""
        custom = [i for i in items if i.custom]
        if not custom:
            return {}
        if self.moderator.name == self.local.name:
            return await self.local.score(custom)
        try:
            return await asyncio.wait_for(self.moderator.score(custom), MODERATOR_SECONDS)
        except Exception as exc:  # outage: the local hard flags still count below
            logger.warning(
                "Prompt screening unavailable | Error: %s | Pieces: %d | checked again at step 4",
                type(exc).__name__, len(custom),
            )
            return {}

    async def run(self, items: list[ModerationItem]) -> dict[str, SafetyVerdict]:
        """The rejected pieces' verdicts (pieces not named here go on to generation)."""
        if not items:
            return {}
        local = await self.local.score(items)
        moderated = await self._moderated(items)
        rejected: dict[str, SafetyVerdict] = {}
        for item in items:
            own = local.get(item.piece_id)
            hard_local = self._hard(own.flagged_categories) if own else []
            found = moderated.get(item.piece_id)
            if found is not None:
                flags = sorted(set(found.flagged_categories) | set(hard_local))
                checked_by = self.moderator.name
            elif hard_local:
                flags, checked_by = hard_local, self.local.name
            else:
                continue
            verdict = verdict_for(
                item, ModerationScores(item.piece_id, flags), checked_by, self.settings
            )
            if verdict.status == "rejected":
                verdict.reason = f"{verdict.reason} ({SCREENED})"
                rejected[item.piece_id] = verdict
        logger.info(
            "Prompt screening | Rejected: %d/%d | Custom: %d | Moderator: %s",
            len(rejected), len(items), sum(1 for i in items if i.custom), self.moderator.name,
        )
        return rejected
