"""The batch's cost from the cost ledger, as a Prefect task (a short database read)."""

from __future__ import annotations

from prefect import task

from studio.db.engine import session_scope
from studio.ledger.totals import BatchCost, batch_cost, piece_image_cost, with_ledger_cost
from studio.types import BatchResult


@task(name="batch-cost", retries=3, retry_delay_seconds=[1, 3, 9], timeout_seconds=30)
def ledger_cost(result: BatchResult) -> tuple[BatchResult, BatchCost]:
    """The result with cost, breakdown and per-piece cost summed from the ledger."""
    with session_scope() as session:
        cost = batch_cost(session, result.batch_id)
        pieces = piece_image_cost(session, result.batch_id)
    return with_ledger_cost(result, cost, pieces), cost
