"""The ledger's rows on SQLite and PostgreSQL: reserve, bill, settle, sums, budgets."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from studio.db.engine import session_scope
from studio.db.models import CostLedgerEntry
from studio.ledger.settings import LedgerSettings
from studio.ledger.store import CallKey, CostLedger
from studio.ledger.totals import avatar_cost, batch_cost


def image_call(piece: str, batch: str = "b-1", avatar: str = "av-1") -> CallKey:
    return CallKey("image", "replicate", batch, avatar, (piece,))


def rows() -> list[CostLedgerEntry]:
    with session_scope() as session:
        return list(session.scalars(select(CostLedgerEntry).order_by(CostLedgerEntry.created_at)))


def test_a_call_is_reserved_then_billed_or_released(any_database) -> None:
    ledger = CostLedger(LedgerSettings(_env_file=None))
    billed = ledger.reserve(image_call("p1"), 0.03)
    ledger.mark_billed(billed.row_id, "pred-1")
    ledger.settle(billed.row_id, "failed", billed=True)  # output lost: still billed
    never = ledger.reserve(image_call("p2"), 0.03)
    ledger.settle(never.row_id, "failed", billed=False)  # 4xx on create: never billed
    by_id = {r.id: r for r in rows()}
    assert (by_id[billed.row_id].status, by_id[billed.row_id].job_id) == ("billed", "pred-1")
    assert by_id[never.row_id].status == "released"
    with session_scope() as session:
        cost = batch_cost(session, "b-1")
    assert cost.total_usd == pytest.approx(0.03) and cost.breakdown["images"] == 0.03
    assert cost.billed_calls == 1


def test_group_calls_are_one_row_listing_their_pieces(any_database) -> None:
    ledger = CostLedger(LedgerSettings(_env_file=None))
    pieces = tuple(f"p{i}" for i in range(10))
    charge = ledger.reserve(CallKey("hook", "anthropic", "b-1", "av-1", pieces), 0.01)
    ledger.settle(charge.row_id, "ok", billed=True, price_usd=0.0021, job_id="msg_1")
    ledger.record(CallKey("moderation", "openai", "b-1", "av-1", pieces), 0.0, estimate_usd=0.001)
    hook, moderation = rows()
    assert hook.piece_id is None and hook.piece_ids == list(pieces)
    assert hook.price_usd == pytest.approx(0.0021)
    assert moderation.price_usd == 0 and moderation.estimate_usd == 0.001
    with session_scope() as session:
        cost = batch_cost(session, "b-1")
        stats = avatar_cost(session, "av-1")
    assert cost.breakdown == {"images": 0.0, "hooks": 0.0021, "safety": 0.0, "storage": 0.0}
    assert stats["cost_by_provider"]["anthropic"] == {"calls": 1, "cost_usd": 0.0021}
    assert stats["cost_by_provider"]["openai"]["calls"] == 1
    assert list(stats["cost_by_day"].values()) == [pytest.approx(0.0021)]  # type: ignore[union-attr]
    assert len(next(iter(stats["cost_by_day"]))) == 10  # type: ignore[arg-type]  # YYYY-MM-DD


def test_batch_budget_counts_calls_in_flight_and_refuses_past_it(any_database) -> None:
    ledger = CostLedger(LedgerSettings(_env_file=None, batch_budget_usd=0.05))
    first = ledger.reserve(image_call("p1"), 0.03)  # in flight, not settled
    second = ledger.reserve(image_call("p2"), 0.03)
    assert first.accepted and not second.accepted
    assert (second.budget_name, second.budget_usd) == ("batch", 0.05)
    assert second.spent_usd == pytest.approx(0.03)
    assert ledger.reserve(image_call("p3"), 0.01).accepted  # a cheaper call still fits
    assert ledger.reserve(image_call("p4", batch="b-2"), 0.03).accepted  # another batch
    refused = [r for r in rows() if r.outcome == "budget"]
    assert [(r.status, r.piece_id) for r in refused] == [("released", "p2")]


def test_released_reservations_free_the_budget(any_database) -> None:
    ledger = CostLedger(LedgerSettings(_env_file=None, batch_budget_usd=0.03))
    first = ledger.reserve(image_call("p1"), 0.03)
    ledger.settle(first.row_id, "failed", billed=False)
    assert ledger.reserve(image_call("p2"), 0.03).accepted


def test_daily_budget_spans_the_avatars_batches(any_database) -> None:
    ledger = CostLedger(LedgerSettings(_env_file=None, avatar_daily_budget_usd=0.06))
    assert ledger.reserve(image_call("p1", batch="b-1"), 0.03).accepted
    assert ledger.reserve(image_call("p2", batch="b-2"), 0.03).accepted
    refused = ledger.reserve(image_call("p3", batch="b-3"), 0.03)
    assert not refused.accepted and refused.budget_name == "avatar daily"
    assert ledger.reserve(image_call("p4", batch="b-3", avatar="av-2"), 0.03).accepted


def test_concurrent_reservations_cannot_overshoot_the_daily_budget(any_database) -> None:
    """Eight threads, each its own connection, reserve at once against one avatar's day."""
    ledger = CostLedger(LedgerSettings(_env_file=None, avatar_daily_budget_usd=0.50))
    start = threading.Barrier(8)
    accepted: list[bool] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        start.wait()
        for i in range(5):
            answer = ledger.reserve(image_call(f"t{n}-{i}", batch=f"b-{n}"), 0.03).accepted
            with lock:
                accepted.append(answer)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reserved = [r for r in rows() if r.status == "reserved"]
    assert len(accepted) == 40
    assert sum(r.price_usd for r in reserved) <= 0.50 + 1e-9
    assert len(reserved) == 16 == accepted.count(True)  # exactly what fits: 16 x $0.03


def test_a_dead_attempt_is_settled_and_its_billed_job_offered_for_recovery(any_database) -> None:
    ledger = CostLedger(LedgerSettings(_env_file=None, batch_budget_usd=0.06))
    dead = ledger.reserve(image_call("p1"), 0.03)
    ledger.mark_billed(dead.row_id, "pred-9")  # then the process was killed mid-poll
    never = ledger.reserve(CallKey("image", "modal", "b-1", "av-1", ("p1",)), 0.01)
    assert ledger.recoverable_job("p1", "replicate") == "pred-9"
    assert ledger.recoverable_job("p1", "modal") is None
    by_id = {r.id: r for r in rows()}
    assert (by_id[dead.row_id].status, by_id[dead.row_id].outcome) == ("billed", "lost")
    assert (by_id[never.row_id].status, by_id[never.row_id].outcome) == ("released", "lost")
    ledger.mark_job("p1", "replicate", "pred-9", "recovered")
    assert ledger.recoverable_job("p1", "replicate") is None
