"""The `BilledJob` the provider chain hands each billed image attempt, backed by the ledger.

Opening a job (before the provider is called) finds a job of this piece at this
provider that was billed earlier but whose output never arrived (`resume_job_id`, so
the provider fetches it instead of buying it again) and reserves the attempt's price
against the budgets. The provider calls `created(job_id)` the moment it is billed; the
chain settles the job when the attempt ends:

- a new job was created: `billed`, with the attempt's outcome (ok, failed, timeout...);
- the attempt fetched the earlier job (created with that id, or succeeded without a new
  one): this row is `released` (nothing new was bought) and the earlier row `recovered`;
- nothing was created and the attempt failed: `released` (it never reached billing);
- nothing was reported but an image came back: `billed` (a provider that does not
  report its billing still billed what it delivered).

Database writes run in a worker thread so the event loop keeps serving other images. A
ledger that cannot be written stops the attempt before the provider is called: no call
is made that the ledger does not hold. An attempt that resumes an earlier job reserves
its full price too, since the provider may have to buy a new job after all.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from studio.ledger.store import CallKey, CostLedger, Reservation

log = logging.getLogger("studio.ledger")

#: batches whose `Budget reached` line was logged by this process (once per batch)
_WARNED: set[str] = set()


class BudgetRefused(Exception):
    """The reservation would pass a budget; the call is not made."""

    def __init__(self, reservation: Reservation) -> None:
        super().__init__("budget")
        self.reservation = reservation


def warn_budget_reached(batch_id: str | None, reservation: Reservation) -> None:
    """`Budget reached | Batch: <id> | Spent: $X | Budget: $Y`, once per batch."""
    key = batch_id or "-"
    if key in _WARNED:
        return
    _WARNED.add(key)
    log.warning(
        "Budget reached | Batch: %s | Spent: $%.2f | Budget: $%.2f",
        key, reservation.spent_usd or 0.0, reservation.budget_usd or 0.0,
    )


@dataclass
class LedgerJob:
    """One billed image attempt's row; implements `studio.providers.base.BilledJob`."""

    ledger: CostLedger
    call: CallKey
    row_id: str
    resume_job_id: str | None
    price_usd: float
    job_id: str | None = None
    _created: bool = False
    _pending: list[asyncio.Future[None]] = field(default_factory=list)

    def created(self, job_id: str | None) -> None:
        """Called by the provider when it is billed; written at once (in a thread)."""
        self._created = True
        self.job_id = job_id
        if self._recovers:
            return  # the earlier job: nothing new bought
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.ledger.mark_billed(self.row_id, job_id)
            return
        self._pending.append(
            loop.run_in_executor(None, self.ledger.mark_billed, self.row_id, job_id)
        )

    @property
    def _recovers(self) -> bool:
        return self.resume_job_id is not None and self.job_id == self.resume_job_id

    async def settle(self, outcome: str, *, delivered: bool) -> None:
        """The attempt ended with `outcome`; `delivered` when an image came back."""
        for pending in self._pending:
            await pending
        await asyncio.to_thread(self._settle_sync, outcome, delivered)

    def _settle_sync(self, outcome: str, delivered: bool) -> None:
        piece, provider = self.call.piece_id, self.call.provider
        recovered = self._recovers or (
            delivered and not self._created and self.resume_job_id is not None
        )
        if recovered:
            self.ledger.settle(self.row_id, "recovered", billed=False, job_id=self.resume_job_id)
            if piece is not None and self.resume_job_id is not None:
                self.ledger.mark_job(piece, provider, self.resume_job_id, "recovered")
            return
        if self._created or delivered:
            self.ledger.settle(self.row_id, outcome, billed=True, job_id=self.job_id)
            if self._created and self.resume_job_id is not None and piece is not None:
                self.ledger.mark_job(piece, provider, self.resume_job_id, "abandoned")
            return
        self.ledger.settle(self.row_id, outcome, billed=False)


class ImageCallLedger:
    """What the chain needs of the ledger: open a job for a billed attempt."""

    def __init__(self, ledger: CostLedger | None = None) -> None:
        self.ledger = ledger or CostLedger()

    async def open(
        self, *, batch_id: str, avatar_id: str, piece_id: str, provider: str, price_usd: float
    ) -> LedgerJob:
        """Raises `BudgetRefused` (after logging the batch's warning) when over budget."""
        return await asyncio.to_thread(
            self._open_sync, batch_id, avatar_id, piece_id, provider, price_usd
        )

    def _open_sync(
        self, batch_id: str, avatar_id: str, piece_id: str, provider: str, price_usd: float
    ) -> LedgerJob:
        call = CallKey("image", provider, batch_id, avatar_id, (piece_id,))
        resume, reservation = self.ledger.open_image_call(call, price_usd)  # one transaction
        if not reservation.accepted:
            warn_budget_reached(batch_id, reservation)
            raise BudgetRefused(reservation)
        return LedgerJob(self.ledger, call, reservation.row_id, resume, price_usd)
