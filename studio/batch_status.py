"""Where a batch is: its step (from the spec's log lines) and its pieces' counts (rows).

`studio batch status` reads both: the run's log lines are the spec's public interface
(`[STEP n/7] ...`), so they say which step finished last whatever the tasks are named;
the rows say how many pieces got how far, durably, even with no Prefect server.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from studio.batchlog import STEP_NAMES
from studio.db.models import Batch, ContentPiece

_MARK = re.compile(r"^\[(?:STEP (?P<step>[1-7])/7\]|BATCH (?P<end>START|COMPLETE|FAILED)\])")

#: the step a piece in this progress status waits for (studio/db/progress.py PROGRESS)
_WAITING_FOR = {"planned": 2, "generated": 3, "captioned": 4, "checked": 5, "stored": 6}


def step_label(number: int) -> str:
    return f"{number}/7 {STEP_NAMES[number]}"


def step_from_log(messages_newest_first: Iterable[str]) -> str | None:
    """What the newest spec line of a run says, or None when it has none yet."""
    for message in messages_newest_first:
        found = _MARK.match(message)
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


def step_from_rows(batch_status: str | None, piece_counts: Mapping[str, int]) -> str:
    """A best guess from the rows alone: the furthest any piece got (steps run one after
    another for the whole batch, so the furthest piece marks the step under way)."""
    if batch_status is None:
        return "not started (queued or validating)"
    if batch_status != "running":
        return f"done ({batch_status})"
    reached = [_WAITING_FOR[s] for s in piece_counts if s in _WAITING_FOR]
    if not reached:
        return step_label(1) if not piece_counts else step_label(7)
    return step_label(max(reached))


@dataclass
class BatchStatus:
    """What `studio batch status` prints; every part is optional (run or row may be missing)."""

    batch_id: str
    run_id: str | None = None
    run_name: str | None = None
    state: str | None = None
    state_message: str | None = None
    link: str | None = None
    step: str | None = None
    row_status: str | None = None
    requested: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    piece_counts: dict[str, int] = field(default_factory=dict)
    cost_usd: float | None = None
    error: str | None = None

    def lines(self) -> list[str]:
        out = []
        if self.run_id:
            out.append(f"run: {self.run_name} ({self.run_id})")
            out.append(f"state: {self.state}" + (f" - {self.state_message}"
                                                  if self.state_message else ""))
            if self.link:
                out.append(f"link: {self.link}")
        out.append(f"batch: {self.batch_id}" + (f" ({self.row_status})" if self.row_status
                                                else " (no batch row yet)"))
        out.append(f"step: {self.step or step_from_rows(self.row_status, self.piece_counts)}")
        if self.requested is not None:
            counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.counts.items())
            out.append(f"pieces: {self.requested} requested; {counts}")
        if self.piece_counts:
            out.append(
                "rows: " + ", ".join(f"{k} {v}" for k, v in sorted(self.piece_counts.items()))
            )
        if self.cost_usd is not None:
            out.append(f"cost: ${self.cost_usd:.2f}")
        if self.error:
            out.append(f"error: {self.error}")
        return out


def read_rows(session: Session, status: BatchStatus) -> bool:
    """Fill `status` from the batch row and its pieces' rows; False when there is no row."""
    row = session.get(Batch, status.batch_id)
    pieces = session.execute(
        select(ContentPiece.status, func.count())
        .where(ContentPiece.batch_id == status.batch_id)
        .group_by(ContentPiece.status)
    ).all()
    status.piece_counts = {piece_status: n for piece_status, n in pieces}
    if row is None:
        return bool(status.piece_counts)
    status.row_status = row.status
    status.requested = row.requested
    status.counts = {
        "published": row.published,
        "rejected": row.rejected,
        "failed": row.failed,
        "pending_review": row.pending_review,
    }
    status.cost_usd = row.cost_usd
    status.error = row.error
    return True
