"""The review form: a typed `RunInput` built for the pieces a `review` run holds.

Why a model made per run (pydantic `create_model`): Prefect renders the JSON schema of
`wait_for_input` as a form in the UI, one input per field. One field per held piece
(a select: hold / approve / reject / capa1 / capa2 / capa3) titled with the piece's
short description, one reason per piece, and the reviewer's name make a form a person
fills without reading ids. The same answers come back as a dict through the API
(`resume_flow_run(run_input=...)`) and are turned into core `Decision`s here.

Field names are positional (`piece_1`, `piece_1_reason`, ...); which piece a position
is lives in the run's own snapshot (flows/review.py), so the form a reviewer answered
and the pieces decided are the same even if more pieces were held meanwhile.
"""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import Any

from prefect.input import RunInput
from pydantic import ConfigDict, Field, create_model

from studio.review import Decision

#: how many pieces one form holds; the rest wait for the next review run
FORM_LIMIT = 40


class ReviewChoice(StrEnum):
    """What the reviewer does with one piece (the select's options, as shown)."""

    hold = "hold"  # decide later: the piece stays held (the default)
    approve = "approve"  # publish it in its own tier
    reject = "reject"  # reject it (a reason is required)
    capa1 = "capa1"  # re-tier to capa1 (public) and approve
    capa2 = "capa2"  # re-tier to capa2 (private) and approve
    capa3 = "capa3"  # re-tier to capa3 (private) and approve


CHOICE_HELP = (
    "hold: decide later (stays held) · approve: publish in its tier · reject: reject "
    "(give a reason) · capa1/capa2/capa3: re-tier to that tier and approve"
)


class ReviewInput(RunInput):
    """Base of every review form. Extra keys are ignored, not refused: an answer
    loaded again after the run resumes must validate even if the form changed."""

    model_config = ConfigDict(extra="ignore")


def choice_field(position: int) -> str:
    return f"piece_{position}"


def reason_field(position: int) -> str:
    return f"piece_{position}_reason"


def build_form(pieces: list[dict[str, Any]]) -> type[ReviewInput]:
    """The form for the snapshot's pieces (dicts with `label` and `description`)."""
    fields: dict[str, Any] = {
        "reviewer": (
            str,
            Field(
                ...,
                min_length=1,
                title="Reviewer",
                description="Your name: every decision records who made it.",
            ),
        )
    }
    for position, piece in enumerate(pieces, start=1):
        fields[choice_field(position)] = (
            ReviewChoice,
            Field(
                default=ReviewChoice.hold,
                title=f"Piece {position}: {piece['label']}",
                description=f"{piece['description']} — {CHOICE_HELP}",
            ),
        )
        fields[reason_field(position)] = (
            str,
            Field(
                default="",
                title=f"Piece {position}: reason",
                description="Why (required to reject; recorded with the decision).",
            ),
        )
    return create_model("ReviewForm", __base__=ReviewInput, **fields)


def decisions_from(
    answers: Any, pieces: list[dict[str, Any]]
) -> tuple[list[Decision], dict[str, str]]:
    """The core decisions of a submitted form, and per piece id why none was made
    (left to hold, or an answer the core refuses, e.g. a rejection without reason)."""
    values = answers.model_dump() if hasattr(answers, "model_dump") else dict(answers)
    reviewer = str(values.get("reviewer") or "").strip()
    decisions: list[Decision] = []
    skipped: dict[str, str] = {}
    for position, piece in enumerate(pieces, start=1):
        raw = values.get(choice_field(position), ReviewChoice.hold)
        choice = ReviewChoice(raw.value if isinstance(raw, Enum) else raw)
        reason = str(values.get(reason_field(position)) or "").strip() or None
        if choice is ReviewChoice.hold:
            skipped[piece["piece_id"]] = "left held by the reviewer"
            continue
        action = "reject" if choice is ReviewChoice.reject else "approve"
        tier = choice.value if choice.value.startswith("capa") else None
        try:
            decisions.append(
                Decision(
                    piece_id=piece["piece_id"], action=action, tier=tier, reason=reason,
                    reviewer=reviewer,
                )
            )
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            first = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
            skipped[piece["piece_id"]] = f"kept held: {first}"
    return decisions, skipped
