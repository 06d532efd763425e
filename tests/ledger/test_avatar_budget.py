"""An avatar's own daily budget (its profile's daily_budget_usd) replaces
AVATAR_DAILY_BUDGET_USD for that avatar's calls, on SQLite and PostgreSQL (issue 18)."""

from __future__ import annotations

import uuid

import pytest

from studio.avatars import add_avatar, update_avatar
from studio.db.engine import session_scope
from studio.ledger.settings import LedgerSettings
from studio.ledger.store import CallKey, CostLedger, avatar_daily_budget

LORA = "https://weights.example/loras/{}.safetensors"


def avatar(name: str, **profile: object) -> str:
    with session_scope() as session:
        return add_avatar(session, name, "fitness", LORA.format(name), profile=profile).id


def image_call(avatar_id: str, index: int) -> CallKey:
    # a batch per call: only the avatar's daily budget can refuse it
    batch_id = str(uuid.uuid4())
    return CallKey("image", "replicate", batch_id, avatar_id, (f"{batch_id[:8]}-p{index}",))


def test_one_avatars_lower_budget_refuses_its_calls_and_not_anothers(any_database) -> None:
    frugal = avatar("frugal", daily_budget_usd=0.05)
    plain = avatar("plain")  # the studio's budget, AVATAR_DAILY_BUDGET_USD (20)
    ledger = CostLedger(LedgerSettings(_env_file=None))

    assert ledger.reserve(image_call(frugal, 1), 0.04).accepted
    refused = ledger.reserve(image_call(frugal, 2), 0.04)
    assert not refused.accepted
    assert (refused.budget_name, refused.budget_usd) == ("avatar daily", 0.05)
    assert refused.spent_usd == pytest.approx(0.04)
    for index in range(3):
        assert ledger.reserve(image_call(plain, index), 0.04).accepted


def test_an_avatars_budget_replaces_the_studios_either_way(
    any_database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AVATAR_DAILY_BUDGET_USD", "0.05")
    monkeypatch.setenv("BATCH_BUDGET_USD", "none")
    generous = avatar("generous", daily_budget_usd=1.0)
    plain = avatar("plain")
    ledger = CostLedger()
    for index in range(3):  # 0.12 > the studio's 0.05: its own 1.00 holds instead
        assert ledger.reserve(image_call(generous, index), 0.04).accepted
    assert ledger.reserve(image_call(plain, 1), 0.04).accepted
    assert not ledger.reserve(image_call(plain, 2), 0.04).accepted


def test_an_avatars_budget_holds_with_the_studio_budgets_off(
    any_database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AVATAR_DAILY_BUDGET_USD", "none")
    monkeypatch.setenv("BATCH_BUDGET_USD", "none")
    frugal = avatar("frugal", daily_budget_usd=0.05)
    plain = avatar("plain")
    ledger = CostLedger()
    assert ledger.reserve(image_call(frugal, 1), 0.04).accepted
    assert not ledger.reserve(image_call(frugal, 2), 0.04).accepted
    for index in range(5):
        assert ledger.reserve(image_call(plain, index), 0.04).accepted
    # a budget changed with `avatar update` holds from the next call on
    with session_scope() as session:
        update_avatar(session, "frugal", profile={"daily_budget_usd": 1.0})
    assert ledger.reserve(image_call(frugal, 3), 0.04).accepted


def test_the_budget_of_an_unknown_avatar_is_the_studios(any_database) -> None:
    settings = LedgerSettings(_env_file=None)
    with session_scope() as session:
        assert avatar_daily_budget(session, "no-such-avatar", settings) == 20.0
