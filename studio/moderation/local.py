"""The local moderator: the offline stand-in for OpenAI moderation, and the free screen.

It scores text only (the hook and the prompt), in the moderation endpoint's category
names, so the same policy applies whichever moderator ran:
- offensive language comes from the `better-profanity` word list (a maintained package
  matched per word, digits read as letters), reported as the local category `profanity`, which the
  policy treats like `sexual`: not public-safe, so it never leaves as capa1;
- the categories the policy hard-blocks come from short lists of neutral trigger terms
  below; `sexual/minors` is reported for any term that means a minor (the avatars are
  adults, so such a piece is never wanted), and for ambiguous ones ("minor", "kids")
  together with a sexual or profane signal or on a non-public tier (capa2/capa3).
Images are not scored here: with no OpenAI key the batch says moderation stood in.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

from studio.moderation.base import ModerationItem, ModerationScores

CATEGORY_TERMS: dict[str, tuple[str, ...]] = {
    "sexual": ("nude", "nudity", "explicit", "nsfw", "topless", "xxx", "lingerie"),
    "self-harm/intent": ("kill myself", "end my life", "self harm", "self-harm"),
    "violence/graphic": ("gore", "gory", "dismember", "mutilat", "bloodbath"),
    "hate": ("racial slur",),
}
# terms that always mean a minor (avatars are adults: such a piece is never wanted)
MINOR_TERMS = (
    "underage",
    "under age",
    "child",
    "children",
    "teen",
    "teens",
    "teenage",
    "teenager",
    "schoolgirl",
    "schoolboy",
    "preteen",
)
# terms that may mean something else ("minor tweaks", "kids these days")
AMBIGUOUS_MINOR_TERMS = ("minor", "minors", "kid", "kids", "young-looking")


# better-profanity's maintained word list, matched per word: its own censor() scans
# every list variant per text (~30 ms a piece), a set lookup per word costs microseconds
LEET = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"}
)
WORD = re.compile(r"[a-z0-9@$!]+")


@lru_cache(maxsize=1)
def _profane_phrases() -> tuple[frozenset[str], int]:
    text = resources.files("better_profanity").joinpath("profanity_wordlist.txt").read_text()
    phrases = frozenset(line.strip().lower() for line in text.splitlines() if line.strip())
    return phrases, max(len(p.split()) for p in phrases)


def contains_profanity(text: str) -> bool:
    """Any listed word or phrase, also spelled with digits for letters ("sh1t").

    Standalone numbers stay numbers, so "shot 4 of the set" is not read as a listed word.
    """
    phrases, longest = _profane_phrases()
    words = [w if w.isdigit() else w.translate(LEET) for w in WORD.findall(text.lower())]
    for size in range(1, longest + 1):
        for i in range(len(words) - size + 1):
            if " ".join(words[i : i + size]) in phrases:
                return True
    return False


def _has(text: str, term: str) -> bool:
    return re.search(rf"\b{re.escape(term)}", text) is not None


def flagged_categories(text: str, tier: str = "capa1") -> list[str]:
    lowered = text.lower()
    flagged = {
        category
        for category, terms in CATEGORY_TERMS.items()
        if any(_has(lowered, term) for term in terms)
    }
    if contains_profanity(text):
        flagged.add("profanity")

    def mentions(terms: tuple[str, ...]) -> bool:
        return any(re.search(rf"\b{re.escape(t)}\b", lowered) for t in terms)

    risky = bool(flagged & {"sexual", "profanity"}) or tier != "capa1"
    if mentions(MINOR_TERMS) or (risky and mentions(AMBIGUOUS_MINOR_TERMS)):
        flagged.add("sexual/minors")
    return sorted(flagged)


class LocalModerator:
    name = "local"
    stand_in = True
    calls = 0
    cost_usd = 0.0

    async def score(self, items: list[ModerationItem]) -> dict[str, ModerationScores]:
        results = {}
        for item in items:
            flagged = flagged_categories(item.text, item.tier)
            results[item.piece_id] = ModerationScores(
                piece_id=item.piece_id,
                flagged_categories=flagged,
                scores={category: 1.0 for category in flagged},
            )
        return results
