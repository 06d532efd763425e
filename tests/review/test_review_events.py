"""Decisions' events: only applied ones are announced, and only to a configured Prefect API
(the command line without one records the decision and emits nothing, rather than booting
a temporary server at exit). Emission to the real API is covered in test_review_queue.py."""

from __future__ import annotations

import logging

from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.review_events import emit_decision_events
from studio.review import DecisionOutcome


def _outcome(result: str) -> DecisionOutcome:
    return DecisionOutcome(
        piece_id=f"p-{result}", action="approve", result=result,  # type: ignore[arg-type]
        status="published", tier="capa1", avatar_id="a", batch_id="b", reviewer="ana",
    )


def test_without_a_prefect_api_nothing_is_emitted_and_the_log_says_so(caplog) -> None:
    caplog.set_level(logging.INFO, logger="studio.review")
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert emit_decision_events([_outcome("applied")]) == 0
    assert "Review events not emitted | 1 decision(s) | no Prefect API" in caplog.text


def test_only_applied_decisions_are_announced() -> None:
    outcomes = [_outcome("applied"), _outcome("already-decided"), _outcome("refused")]
    assert emit_decision_events(iter(outcomes)) == 1
