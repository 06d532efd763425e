"""Ledger rows for the hosted-API calls of hooks (Anthropic) and moderation (OpenAI).

A hook call's price is only known from the usage the API reports, so the call reserves
an upper estimate first (`studio.ledger.pricing.hook_call_estimate`; a budget may refuse
it, and the group then gets template hooks, which are free) and is settled at the
reported usage's price. A Message Batch is one row for all its groups: billed for the
requests whose results were read; if it was created but its results were never read,
it stays billed at the estimate with outcome `lost` (over-counting beats missing money).
Moderation is free: its calls are recorded at $0 with the spec's figure as estimate,
one statement per moderation step. Database writes run in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from studio.ledger.jobs import BudgetRefused, warn_budget_reached
from studio.ledger.pricing import MODERATION_BILLED_USD
from studio.ledger.store import CallKey, CostLedger


@dataclass
class CallCharge:
    """One reserved hosted-API call: mark it created, then settle it once."""

    ledger: CostLedger
    row_id: str
    estimate_usd: float
    job_id: str | None = None
    created_: bool = False
    settled: bool = False

    def created(self, job_id: str | None) -> None:
        self.created_ = True
        self.job_id = job_id

    async def billed(self, price_usd: float, outcome: str = "ok") -> None:
        """The call was answered and billed at `price_usd` (priced from its usage)."""
        await self._settle(outcome, billed=True, price_usd=price_usd)

    async def failed(self, outcome: str = "failed") -> None:
        """No answer: released, unless it was created (then billed at the estimate)."""
        if self.created_:
            await self._settle("lost", billed=True, price_usd=self.estimate_usd)
        else:
            await self._settle(outcome, billed=False)

    async def _settle(self, outcome: str, *, billed: bool, price_usd: float | None = None) -> None:
        if self.settled:
            return
        self.settled = True
        await asyncio.to_thread(
            self.ledger.settle, self.row_id, outcome, billed=billed, price_usd=price_usd,
            job_id=self.job_id,
        )


class HookCallLedger:
    """Reserves and settles hook calls (kind `hook`, provider `anthropic`)."""

    def __init__(self, ledger: CostLedger | None = None) -> None:
        self.ledger = ledger or CostLedger()

    async def reserve(
        self, piece_ids: Sequence[str], batch_id: str | None, avatar_id: str, estimate_usd: float
    ) -> CallCharge:
        """Raises `BudgetRefused` (after the batch's warning line) when over budget."""
        call = CallKey("hook", "anthropic", batch_id, avatar_id, tuple(piece_ids))
        reservation = await asyncio.to_thread(
            self.ledger.reserve, call, estimate_usd, estimate_usd=estimate_usd
        )
        if not reservation.accepted:
            warn_budget_reached(batch_id, reservation)
            raise BudgetRefused(reservation)
        return CallCharge(self.ledger, reservation.row_id, estimate_usd)


@dataclass
class ModerationCalls:
    """The moderation calls of one step, written together when the step ends."""

    ledger: CostLedger
    estimate_usd: float
    calls: list[tuple[CallKey, float, str, str | None, float | None]] = field(
        default_factory=list
    )

    def add(self, piece_ids: Sequence[str], outcome: str = "ok", job_id: str | None = None) -> None:
        call = CallKey("moderation", "openai", None, None, tuple(piece_ids))
        self.calls.append((call, MODERATION_BILLED_USD, outcome, job_id, self.estimate_usd))

    async def flush(self) -> None:
        calls, self.calls = self.calls, []
        if calls:
            await asyncio.to_thread(self.ledger.record_many, calls)
