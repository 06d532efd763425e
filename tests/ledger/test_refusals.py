"""Bad budget or price variables are refused at start, naming the variable: the CLI exits
2 and nothing is written or spent; `studio stats` shows what providers billed."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from studio.db.engine import session_scope
from studio.db.models import Batch, ContentPiece, CostLedgerEntry
from studio.ledger.store import CallKey, CostLedger

runner = CliRunner()


@pytest.fixture
def demo(studio_env) -> str:
    from studio.bootstrap import ensure_demo_avatar

    ensure_demo_avatar()
    return "demo"


def count(model: type) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BATCH_BUDGET_USD", "-1"),
        ("BATCH_BUDGET_USD", "ten dollars"),
        ("AVATAR_DAILY_BUDGET_USD", "nan"),
        ("REPLICATE_PRICE_USD", "-0.03"),
        ("MODAL_PRICE_USD", "inf"),
        ("COMFYUI_PRICE_USD", "free"),
        ("ANTHROPIC_PRICE_OUTPUT_PER_MTOK", "-5"),
        ("MODERATION_PRICE_PER_CALL_USD", "-0.001"),
    ],
)
def test_bad_budget_or_price_exits_2_naming_the_variable(demo, monkeypatch, variable, value):
    from cli.app import app

    monkeypatch.setenv(variable, value)
    result = runner.invoke(app, ["batch", "run", "--avatar", demo, "--pieces", "2"])
    assert result.exit_code == 2, result.output
    assert variable in result.output.replace("\n", "")
    assert count(Batch) == count(ContentPiece) == count(CostLedgerEntry) == 0


def test_none_turns_a_budget_off_and_blank_keeps_the_default(demo, monkeypatch):
    """Budgets are on by default (issue 15): only an explicit `none` turns one off; a blank
    line in a .env file does not silently remove it."""
    from studio.ledger.validation import validate_cost_settings

    monkeypatch.setenv("BATCH_BUDGET_USD", "none")
    monkeypatch.setenv("AVATAR_DAILY_BUDGET_USD", "2.5")
    budgets = validate_cost_settings()
    assert budgets.batch_budget_usd is None and budgets.avatar_daily_budget_usd == 2.5
    monkeypatch.setenv("BATCH_BUDGET_USD", "")
    monkeypatch.delenv("AVATAR_DAILY_BUDGET_USD")
    budgets = validate_cost_settings()
    assert (budgets.batch_budget_usd, budgets.avatar_daily_budget_usd) == (10.0, 20.0)


def test_stats_show_billed_cost_by_provider_and_day(demo) -> None:
    from cli.app import app
    from studio.avatars import find_avatar

    with session_scope() as session:
        avatar_id = find_avatar(session, demo).id
    ledger = CostLedger()
    for provider, price in (("modal", 0.01), ("modal", 0.01), ("replicate", 0.03)):
        reservation = ledger.reserve(CallKey("image", provider, "b-s", avatar_id, ("p",)), price)
        ledger.settle(reservation.row_id, "ok", billed=True)
    result = runner.invoke(app, ["stats", "--avatar", demo])
    assert result.exit_code == 0, result.output
    billed = json.loads(result.output)["billed"]
    assert billed["cost_usd"] == pytest.approx(0.05)
    assert billed["cost_by_provider"] == {
        "modal": {"calls": 2, "cost_usd": 0.02}, "replicate": {"calls": 1, "cost_usd": 0.03}
    }
    assert list(billed["cost_by_day"].values()) == [pytest.approx(0.05)]


def test_a_budget_reached_automation_matches_the_event_the_batch_emits() -> None:
    from deployments.automations import DEFINITIONS

    budget = [d for d in DEFINITIONS if "studio.alert.budget-reached" in d.trigger.expect]
    assert len(budget) == 1 and budget[0].trigger.threshold == 1
