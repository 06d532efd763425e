"""The review queue (issue 19): pieces held as `pending_review`, and a person's decisions.

One code path for the `review` flow (its form) and `studio review` (the command line):
`held_pieces` says what is held and why; `apply_decisions` approves (stores the image
where its tier belongs, publishes it) or rejects, once per piece, and refuses what no
reviewer may pass (a hard-blocked piece, a capa1 re-tier moderation did not allow).
"""

from studio.review.decisions import Decision, DecisionOutcome, apply_decisions, unknown_pieces
from studio.review.queue import HeldPiece, held_pieces

__all__ = [
    "Decision",
    "DecisionOutcome",
    "HeldPiece",
    "apply_decisions",
    "held_pieces",
    "unknown_pieces",
]
