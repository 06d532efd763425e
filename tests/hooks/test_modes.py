"""hook_mode: which batches use the Message Batches API, and the time they may spend."""

from __future__ import annotations

import pytest

from studio.hooks.modes import message_batch_budget, uses_message_batches
from studio.request import BatchRequestError, make_request


@pytest.mark.parametrize(
    ("mode", "scheduled", "expected"),
    [
        ("direct", False, False),
        ("direct", True, False),
        ("message-batches", False, True),
        ("auto", False, False),
        ("auto", True, True),
    ],
)
def test_modes(mode: str, scheduled: bool, expected: bool) -> None:
    assert uses_message_batches(mode, scheduled=scheduled) is expected


def test_the_budget_is_what_the_batch_has_left_less_the_margin_capped() -> None:
    assert message_batch_budget(batch_timeout=600, elapsed=200, margin=120, cap=300) == 280
    assert message_batch_budget(batch_timeout=600, elapsed=10, margin=120, cap=300) == 300
    assert message_batch_budget(batch_timeout=600, elapsed=550, margin=120, cap=300) == 0


def test_an_unknown_hook_mode_is_refused_naming_the_field() -> None:
    with pytest.raises(BatchRequestError) as info:
        make_request(avatar_id="a", hook_mode="cheap")
    assert info.value.field == "hook_mode"
    assert "direct, message-batches, auto" in info.value.message
