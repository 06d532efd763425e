"""What `studio batch status` says about a batch: one source for each fact.

Why (issue 16): the command printed the old run's `Crashed`, the row's `(completed)`, a
stale `step 2/7` and the old error together after an auto-resume, `$0.00` for a crashed
batch whose ledger held $0.66, and `(running)` forever for a killed local batch. Each
fact now has one source and everything else is derived from it:

- the state: Prefect's state of the batch's NEWEST run (the last resume recorded on the
  row, else the run that made it); with no run (no server, or not found) the row; and a
  local run whose process is gone (studio/batch_owner.py) is `Interrupted`, whatever the
  stale `Running` says;
- the step: the spec's log lines of that run while it runs, else what the rows show;
- piece counts: the piece rows, grouped by status (not the row's counters, written only
  at the end);
- the cost: the cost ledger's billed rows (studio/ledger/totals.py), plus the calls
  still reserved.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from studio.batchlog import STEP_NAMES
from studio.db.models import Batch, ContentPiece, CostLedgerEntry

MARK = re.compile(r"^\[(?:STEP (?P<step>[1-7])/7\]|BATCH (?P<end>START|COMPLETE|FAILED)\])")

#: the step a piece in this progress status waits for (studio/db/piece_progress.py PROGRESS)
_WAITING_FOR = {"planned": 2, "generated": 3, "captioned": 4, "checked": 5, "stored": 6}
#: piece statuses that are an ending, in the order they are printed
FINAL_PIECES = ("published", "stored_locally", "rejected", "failed", "pending_review")

#: Prefect state name -> the batch's ending, as the row spells it
_ENDINGS = {
    "Completed": "completed",
    "Failed": "failed",
    "Refused": "refused",
    "Crashed": "crashed",
    "TimedOut": "timed_out",
    "Cancelled": "cancelled",
    "Cancelling": "cancelled",
    "Running": "running",
    "Retrying": "running",
    "Scheduled": "queued",
    "Pending": "queued",
    "Late": "queued",
    "AwaitingRetry": "queued",
    "Paused": "paused",
}
UNDER_WAY = ("running", "queued", "paused")
#: Prefect states a killed run is left in (nothing marks it ended)
_UNFINISHED = (None, "Running", "Retrying", "Pending", "Scheduled", "Late")
#: endings `batch resume` finishes
RESUMABLE = ("failed", "crashed", "timed_out", "cancelled", "interrupted")


def step_label(number: int) -> str:
    return f"{number}/7 {STEP_NAMES[number]}"


def step_from_log(messages_newest_first: Iterable[str]) -> str | None:
    """What the newest spec line of a run says, or None when it has none yet."""
    for message in messages_newest_first:
        found = MARK.match(message)
        if found is None:
            continue
        if found["end"] == "COMPLETE":
            return "done ([BATCH COMPLETE])"
        if found["end"] == "FAILED":
            return "done ([BATCH FAILED])"
        if found["end"] == "START":
            return f"{step_label(1)} (running)"
        finished = int(found["step"])
        if finished == 7:
            return f"{step_label(7)} finished, writing the result"
        return f"{step_label(finished + 1)} (step {finished} finished)"
    return None


def step_from_rows(piece_counts: Mapping[str, int]) -> str:
    """The furthest step any piece reached (steps run one after another for the whole
    batch, so the furthest piece marks the step under way)."""
    reached = [_WAITING_FOR[s] for s in piece_counts if s in _WAITING_FOR]
    if not reached:
        return step_label(1) if not piece_counts else step_label(7)
    return step_label(max(reached))


@dataclass
class RunFacts:
    """A Prefect flow run of the batch, as read from the API."""

    id: str
    name: str | None
    state: str | None
    message: str | None = None
    link: str | None = None
    log_step: str | None = None


@dataclass
class BatchStatus:
    """Everything `batch status` prints (and `--json` returns), derived by `derive()`."""

    batch_id: str
    avatar: str | None = None
    run: RunFacts | None = None
    earlier_runs: list[RunFacts] = field(default_factory=list)
    row_status: str | None = None
    row_error: str | None = None
    requested: int | None = None
    piece_counts: dict[str, int] = field(default_factory=dict)
    cost_usd: float | None = None
    billed_calls: int = 0
    reserved_calls: int = 0
    reserved_usd: float = 0.0
    local_owner_gone: str | None = None  # "pid N on host H" when a local run was killed
    # derived
    ending: str = "not started"
    step: str = ""
    error: str | None = None
    hint: str | None = None

    def derive(self) -> BatchStatus:
        """Fill ending, step, error and hint from the facts above (one source each)."""
        if self.run is not None and self.run.state:
            self.ending = _ENDINGS.get(self.run.state, self.run.state.lower())
        elif self.row_status is not None:
            self.ending = self.row_status
        if self.local_owner_gone and self.ending in ("running", "queued"):
            self.ending = "interrupted"
        if self.ending in ("running", "paused"):
            self.step = (self.run.log_step if self.run else None) or step_from_rows(
                self.piece_counts
            )
        elif self.ending == "queued" and self.earlier_runs:
            self.step = f"resume queued (stopped at {step_from_rows(self.piece_counts)})"
        elif self.ending == "queued" or (self.ending == "not started" and not self.piece_counts):
            self.step = "not started (queued or validating)"
        elif self.ending in RESUMABLE and self.ending != "failed":  # failed: it got to the end
            self.step = f"stopped at {step_from_rows(self.piece_counts)}"
        else:
            self.step = f"done ({self.ending})"
        message = self.run.message if self.run else None
        if self.ending == "interrupted":
            self.error = f"the local process that ran it ({self.local_owner_gone}) is gone"
        elif self.ending not in ("completed", *UNDER_WAY) and self.row_error != message:
            self.error = self.row_error
        if self.ending in RESUMABLE:
            self.hint = f"studio batch resume {self.batch_id}"
        return self

    def state_line(self) -> str:
        if self.ending == "interrupted":
            return "state: Interrupted"
        if self.run is not None and self.run.state:
            extra = f" - {self.run.message}" if self.run.message else ""
            return f"state: {self.run.state}{extra}"
        return f"state: {self.ending} (from the batch row; no Prefect run found)"

    def lines(self) -> list[str]:
        out = []
        if self.run is not None:
            out.append(f"run: {self.run.name} ({self.run.id})")
        out.append(self.state_line())
        if self.run is not None and self.run.link:
            out.append(f"link: {self.run.link}")
        for earlier in self.earlier_runs:  # superseded by the run above: not the state
            ended = earlier.state if earlier.state not in _UNFINISHED else "stopped"
            out.append(f"earlier run: {earlier.name or '-'} ({earlier.id}) {ended}, resumed")
        shown = self.ending
        if not (self.row_status or self.piece_counts):
            shown = "refused: nothing written" if self.ending == "refused" else "no batch row yet"
        out.append(f"batch: {self.batch_id} ({shown})")
        out.append(f"step: {self.step}")
        if self.requested is not None or self.piece_counts:
            out.append(f"pieces: {self.pieces_text()}")
        if self.cost_usd is not None:
            cost = f"cost: ${self.cost_usd:.2f} ({self.billed_calls} billed calls)"
            if self.reserved_calls:
                cost += (
                    f"; {self.reserved_calls} calls reserved (${self.reserved_usd:.2f}),"
                    " settled when the batch is resumed"
                    if self.ending not in UNDER_WAY
                    else f"; {self.reserved_calls} calls in flight"
                )
            out.append(cost)
        if self.error:
            out.append(f"error: {self.error}")
        if self.hint:
            out.append(f"resume: {self.hint}")
        return out

    def pieces_text(self) -> str:
        counts = self.piece_counts
        final = [
            f"{s.replace('_', ' ')} {counts.get(s, 0)}"
            for s in FINAL_PIECES
            if s in counts or s in ("published", "rejected", "failed", "pending_review")
        ]
        open_ = sum(n for s, n in counts.items() if s not in FINAL_PIECES)
        if open_:
            final.append(f"in progress {open_}")
        requested = f"{self.requested} requested; " if self.requested is not None else ""
        return requested + ", ".join(final)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state_line().removeprefix("state: ")
        return data


def read_rows(session: Session, status: BatchStatus) -> bool:
    """Fill `status` from the batch row, its pieces' rows and its ledger rows; False
    when the database knows nothing of the batch."""
    row = session.get(Batch, status.batch_id)
    pieces = session.execute(
        select(ContentPiece.status, func.count())
        .where(ContentPiece.batch_id == status.batch_id)
        .group_by(ContentPiece.status)
    ).all()
    status.piece_counts = {piece_status: int(n) for piece_status, n in pieces}
    ledger = session.execute(
        select(
            CostLedgerEntry.status,
            func.count(),
            func.coalesce(func.sum(CostLedgerEntry.price_usd), 0.0),
        )
        .where(CostLedgerEntry.batch_id == status.batch_id)
        .group_by(CostLedgerEntry.status)
    ).all()
    by_status = {s: (int(n), float(usd)) for s, n, usd in ledger}
    if row is None and not status.piece_counts and not by_status:
        return False
    status.billed_calls, billed = by_status.get("billed", (0, 0.0))
    status.reserved_calls, status.reserved_usd = by_status.get("reserved", (0, 0.0))
    status.cost_usd = round(billed, 6)
    if row is not None:
        status.row_status = row.status
        status.requested = row.requested
        status.row_error = row.error
        status.avatar = row.avatar_id
    return True


def run_ids_of(session: Session, batch_id: str) -> list[str]:
    """The batch's runs, oldest first: the run that made it (its id is the batch id
    when Prefect ran it), then every resume recorded on the row."""
    row = session.get(Batch, batch_id)
    resumes = [str(e["run_id"]) for e in (row.resumes or []) if e.get("run_id")] if row else []
    return [batch_id, *[r for r in resumes if r != batch_id]]
