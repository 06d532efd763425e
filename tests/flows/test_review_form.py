"""The review form and artifact (flows/review_form.py, flows/review.py), without a server:
the schema the UI renders, the answers turned into core decisions, the artifact's words.
The run itself (suspend, resume, rows) is tests/prefect_server/test_review_flow.py."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect.input.run_input import create_v2_schema

from flows.review import review_markdown, snapshot_of
from flows.review_form import build_form, decisions_from
from studio.review import HeldPiece

PIECES = [
    {"piece_id": "p-1", "label": "ava · capa1 · Sunset", "description": "held: moderation down"},
    {"piece_id": "p-2", "label": "ava · capa3 · Beach", "description": "held: degraded"},
]


def held(**overrides: object) -> HeldPiece:
    values: dict[str, object] = {
        "piece_id": "p-1", "batch_id": "b-1", "avatar_id": "a-1", "avatar_name": "ava",
        "tier": "capa1", "prompt": "a sunset over the sea", "hook_text": "Golden hour",
        "reason": "moderation unavailable", "scores": {"sexual": 0.02, "violence": 0.01},
        "created_at": datetime.now(UTC),
        "image_url": "https://store.example/staging/p-1.png?X-Amz-Expires=3600",
        "image_url_expires_at": datetime(2026, 1, 1, 12, 0, tzinfo=UTC),
    }
    values.update(overrides)
    return HeldPiece(**values)  # type: ignore[arg-type]


def test_the_form_has_a_titled_select_and_reason_per_piece_and_the_reviewer() -> None:
    schema = create_v2_schema("ReviewForm", model_base=build_form(PIECES))
    props = schema["properties"]
    assert list(props) == ["reviewer", "piece_1", "piece_1_reason", "piece_2", "piece_2_reason"]
    assert schema["required"] == ["reviewer"]
    assert props["piece_1"]["title"] == "Piece 1: ava · capa1 · Sunset"
    assert props["piece_1"]["default"] == "hold"
    assert "held: moderation down" in props["piece_1"]["description"]
    choices = schema["definitions"]["ReviewChoice"]["enum"]
    assert choices == ["hold", "approve", "reject", "capa1", "capa2", "capa3"]


def test_answers_become_decisions_and_what_is_not_decided_says_why() -> None:
    form = build_form(PIECES)
    answers = form.model_validate(
        {"reviewer": "Rita", "piece_1": "capa2", "piece_2": "reject", "piece_2_reason": ""}
    )
    decisions, skipped = decisions_from(answers, PIECES)
    assert [(d.piece_id, d.action, d.tier, d.reviewer) for d in decisions] == [
        ("p-1", "approve", "capa2", "Rita")
    ]
    assert "rejection gives its reason" in skipped["p-2"]

    answers = form.model_validate(
        {"reviewer": "Rita", "piece_2": "reject", "piece_2_reason": "blurry", "gone": "x"}
    )  # an answer given to an older form: extra keys are ignored, not refused
    decisions, skipped = decisions_from(answers, PIECES)
    assert [(d.piece_id, d.action, d.reason) for d in decisions] == [("p-2", "reject", "blurry")]
    assert skipped == {"p-1": "left held by the reviewer"}


def test_the_artifact_shows_each_piece_to_judge_with_a_short_lived_link() -> None:
    pieces = [held(), held(piece_id="p-2", tier="capa3", image_url=None, image_path=None,
                          reason="degraded: cached image", degraded=True)]
    markdown = review_markdown(pieces, "Review: 2 held piece(s) of avatar ava")
    assert "![piece 1](https://store.example/staging/p-1.png?X-Amz-Expires=3600)" in markdown
    assert "link valid until 2026-01-01 12:00 UTC" in markdown
    assert "**Why held:** moderation unavailable" in markdown
    assert "sexual 0.02" in markdown and "**Hook / caption:** Golden hour" in markdown
    assert "## Piece 2: ava · capa3" in markdown and "_no image available_" in markdown
    assert snapshot_of(pieces[0])["label"] == "ava · capa1 · Golden hour"


def test_a_piece_held_because_moderation_did_not_answer_does_not_read_as_checked() -> None:
    unchecked = held(reason="moderation unavailable", checked_by="openai", categories=[])
    markdown = review_markdown([unchecked], "Review: 1 held piece(s) of avatar ava")
    assert "**Moderation:** not checked: openai did not answer" in markdown
    assert "flagged nothing" not in markdown
    flagged = held(reason="borderline score", checked_by="openai", categories=["violence"])
    assert "checked by openai; flagged violence" in review_markdown([flagged], "Review")
