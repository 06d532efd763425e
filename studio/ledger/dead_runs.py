"""Settle the ledger rows a dead run left open: billed if the provider has the job.

WHY: a row is `reserved` before its call and marked `billed` when the provider answers
with a job id; a process killed in between (kill -9, OOM, a lost host) leaves it
`reserved` for good, holding its price against the budgets as if still in flight, and
the batch's cost says nothing true about it. A row `billed` but never settled (killed
mid-poll) is open too. Nothing else ever settles them, so a resume does, before it
spends anything: every open row of the batch belongs to a dead run then (a batch runs
in one run at a time: registration refuses a second).

Each open row is put to the provider (`JobLookup`, studio/providers/job_lookup.py),
by its job id where it has one, else by what the call sent (Replicate: the piece's
seed among the predictions created since the reservation):

- the provider has the job: `billed` with its job id and outcome `lost` (the output
  never arrived), so the resume fetches that job instead of buying it again;
- the provider does not have it: `released`, outcome `dead-run` (never billed);
- the provider cannot be asked (no id and no search, or it did not answer):
  `billed`, outcome `unconfirmed`: the call may have been billed, and over-counting
  beats missing money (as for a Message Batch whose results were never read).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import Table, and_, or_, select, update

from studio.db.engine import session_scope
from studio.db.models import CostLedgerEntry

log = logging.getLogger("studio.ledger")

_TABLE: Table = CostLedgerEntry.__table__  # type: ignore[assignment]
#: outcomes this module writes
LOST, DEAD_RUN, UNCONFIRMED = "lost", "dead-run", "unconfirmed"


@dataclass(frozen=True)
class OpenRow:
    """A ledger row a dead run left open."""

    id: str
    kind: str
    provider: str
    status: str
    piece_id: str | None
    job_id: str | None
    created_at: datetime
    #: job ids this piece's other rows at this provider already hold (not this call's)
    known_job_ids: frozenset[str] = frozenset()


@dataclass(frozen=True)
class JobAnswer:
    """What the provider says of a row's call: `found` None when it cannot tell."""

    found: bool | None
    job_id: str | None = None


class JobLookup(Protocol):
    async def find(self, row: OpenRow) -> JobAnswer:
        """Whether the provider has (and so billed) the job of `row`."""
        ...


@dataclass
class SettleReport:
    billed: int = 0
    released: int = 0
    unconfirmed: int = 0
    rows: dict[str, str] = field(default_factory=dict)

    @property
    def settled(self) -> int:
        return self.billed + self.released + self.unconfirmed


def open_rows(batch_id: str, before: datetime | None = None) -> list[OpenRow]:
    """The batch's `reserved` rows and its `billed` rows without an outcome."""
    open_ = or_(
        _TABLE.c.status == "reserved",
        and_(_TABLE.c.status == "billed", _TABLE.c.outcome.is_(None)),
    )
    where = [_TABLE.c.batch_id == batch_id, open_]
    if before is not None:
        where.append(_TABLE.c.created_at < before)
    with session_scope() as session:
        found = session.execute(select(_TABLE).where(*where)).mappings().all()
        pieces = {r["piece_id"] for r in found if r["piece_id"]}
        jobs: dict[tuple[str, str], set[str]] = {}
        if pieces:
            for piece, provider, job in session.execute(
                select(_TABLE.c.piece_id, _TABLE.c.provider, _TABLE.c.job_id).where(
                    _TABLE.c.piece_id.in_(pieces), _TABLE.c.job_id.is_not(None)
                )
            ):
                jobs.setdefault((piece, provider), set()).add(job)
    return [
        OpenRow(
            id=r["id"], kind=r["kind"], provider=r["provider"], status=r["status"],
            piece_id=r["piece_id"], job_id=r["job_id"], created_at=_aware(r["created_at"]),
            known_job_ids=frozenset(jobs.get((r["piece_id"], r["provider"]), set())),
        )
        for r in found
    ]


async def settle_dead_rows(
    batch_id: str, lookup: JobLookup, *, before: datetime | None = None
) -> SettleReport:
    """Settle every open row of `batch_id` (created before `before`) by asking its provider."""
    report = SettleReport()
    rows = await asyncio.to_thread(open_rows, batch_id, before)
    for row in rows:
        if row.status == "billed":  # billed, never settled: its output was lost
            answer = JobAnswer(True, row.job_id)
        else:
            try:
                answer = await lookup.find(row)
            except Exception as exc:  # the provider did not answer: cannot tell
                log.warning(
                    "Dead-run lookup failed | Provider: %s | Error: %s",
                    row.provider, type(exc).__name__,
                )
                answer = JobAnswer(None)
        outcome = await asyncio.to_thread(_settle, row, answer)
        report.rows[row.id] = outcome
        if outcome == DEAD_RUN:
            report.released += 1
        elif outcome == UNCONFIRMED:
            report.unconfirmed += 1
        else:
            report.billed += 1
    if rows:
        log.warning(
            "Dead-run ledger rows settled | Batch: %s | Billed: %d | Released: %d"
            " | Unconfirmed (billed): %d",
            batch_id, report.billed, report.released, report.unconfirmed,
        )
    return report


def _settle(row: OpenRow, answer: JobAnswer) -> str:
    now = datetime.now(UTC)
    if answer.found is False:
        values: dict[str, object] = {"status": "released", "outcome": DEAD_RUN}
    elif answer.found is None:
        values = {"status": "billed", "outcome": UNCONFIRMED}
    else:
        values = {"status": "billed", "outcome": LOST}
        if answer.job_id:
            values["job_id"] = answer.job_id
    with session_scope() as session:
        # only if still open: a row settled meanwhile keeps what it says
        session.execute(
            update(_TABLE)
            .where(_TABLE.c.id == row.id, _TABLE.c.status == row.status,
                   _TABLE.c.outcome.is_(None))
            .values(**values, settled_at=now)
        )
    return str(values["outcome"]) if values["outcome"] != LOST else "billed"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
