"""`studio batch list`: the batches in the database, newest first.

Why (issue 16): a killed batch's id could only be found in SQLite. The list reads the
same sources as `batch status` (studio/batch_status.py): pieces from the piece rows,
cost from the ledger's billed rows, and a local batch whose process is gone shows as
`interrupted`. It does not ask Prefect (one query per listed batch would make it slow):
`batch status <id>` does.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cli.output import console, print_json, refuse
from studio.request import BatchRequestError

#: what a batch row's status may be (studio/db/batch_endings.py), plus the derived one
STATUSES = (
    "running",
    "completed",
    "failed",
    "refused",
    "timed_out",
    "crashed",
    "cancelled",
    "interrupted",
)
_RELATIVE = re.compile(r"^(?P<n>\d{1,6})(?P<unit>[mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def parse_since(value: str | None, now: datetime | None = None) -> datetime | None:
    """`--since`: an ISO date or time (UTC unless it says otherwise) or an age such as
    `30m`, `12h`, `7d`; anything else exits 2 naming the option."""
    if value is None:
        return None
    now = now or datetime.now(UTC)
    relative = _RELATIVE.match(value.strip())
    if relative:
        return now - timedelta(**{_UNITS[relative["unit"]]: int(relative["n"])})
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        refuse(
            BatchRequestError(
                "since",
                f"{value[:40]!r} is not a date; use e.g. 2026-12-01, 2026-12-01T06:00 or 7d",
            )
        )
    # in UTC: SQLite compares the stored UTC text, ignoring an offset
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def list_batches(
    session: Session,
    avatar_id: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    limit: int = 20,
) -> list[dict[str, Any]]:
    """The newest batches matching the filters, each with its derived facts."""
    from studio.batch_owner import owner_of
    from studio.db.models import Avatar, Batch, ContentPiece, CostLedgerEntry

    stmt = select(Batch, Avatar.name).join(Avatar, Avatar.id == Batch.avatar_id, isouter=True)
    if avatar_id:
        stmt = stmt.where(Batch.avatar_id == avatar_id)
    if status and status != "interrupted":
        stmt = stmt.where(Batch.status == status)
    elif status == "interrupted":
        stmt = stmt.where(Batch.status == "running")
    if since is not None:
        stmt = stmt.where(Batch.started_at >= since)
    stmt = stmt.order_by(Batch.started_at.desc(), Batch.id)
    if status not in ("interrupted", "running"):  # told apart below, from the owner marker
        stmt = stmt.limit(limit)
    rows = session.execute(stmt).all()
    ids = [batch.id for batch, _ in rows]
    pieces: dict[str, dict[str, int]] = {}
    for batch_id, piece_status, n in session.execute(
        select(ContentPiece.batch_id, ContentPiece.status, func.count())
        .where(ContentPiece.batch_id.in_(ids))
        .group_by(ContentPiece.batch_id, ContentPiece.status)
    ):
        pieces.setdefault(batch_id, {})[piece_status] = int(n)
    cost = dict(
        session.execute(
            select(CostLedgerEntry.batch_id, func.coalesce(func.sum(CostLedgerEntry.price_usd), 0))
            .where(CostLedgerEntry.batch_id.in_(ids), CostLedgerEntry.status == "billed")
            .group_by(CostLedgerEntry.batch_id)
        ).all()
    )
    out = []
    for batch, avatar_name in rows:
        shown = batch.status
        if shown == "running":
            owner = owner_of(batch.id)
            if owner is not None and not owner.alive():
                shown = "interrupted"
        if status is not None and shown != status:  # asked for running: not interrupted ones
            continue
        if len(out) == limit:
            break
        resumes = [e.get("run_id") for e in (batch.resumes or []) if e.get("run_id")]
        counts = pieces.get(batch.id, {})
        out.append(
            {
                "batch_id": batch.id,
                "avatar": avatar_name or batch.avatar_id,
                "status": shown,
                "requested": batch.requested,
                "published": counts.get("published", 0) + counts.get("stored_locally", 0),
                "pieces": counts,
                "cost_usd": round(float(cost.get(batch.id, 0.0)), 6),
                "started_at": batch.started_at.isoformat() if batch.started_at else None,
                # the newest run: the last resume, else the run that made it (same id)
                "run_id": str(resumes[-1]) if resumes else batch.id,
            }
        )
    return out


def batch_list(
    avatar: Annotated[str | None, typer.Option("--avatar", help="avatar id or name")] = None,
    status: Annotated[str | None, typer.Option("--status", help=", ".join(STATUSES))] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="ISO date/time (UTC) or an age: 30m, 12h, 7d")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (for scripts)")] = False,
) -> None:
    """List batches, newest first: id, avatar, status, pieces, cost, started, run id
    ("same": the run that made it has the batch's id)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from studio.avatars import find_avatar
    from studio.db.engine import session_scope

    if status is not None and status not in STATUSES:
        refuse(BatchRequestError("status", f"unknown status {status!r}; use {', '.join(STATUSES)}"))
    moment = parse_since(since)
    with session_scope() as session:
        avatar_id = None
        if avatar is not None:
            found = find_avatar(session, avatar)
            if found is None:
                refuse(BatchRequestError("avatar", f"no avatar with id or name {avatar!r}"))
            avatar_id = found.id
        batches = list_batches(session, avatar_id, status, moment, limit)
    if as_json:
        print_json(batches)
        return
    if not batches:
        console.print("no batches match", highlight=False)
        return
    table = Table("batch", "avatar", "status", "published", "cost", "started (UTC)", "run")
    for b in batches:
        started = (b["started_at"] or "")[:16].replace("T", " ")
        pieces = f"{b['published']}/{b['requested']}"
        run = "same" if b["run_id"] == b["batch_id"] else b["run_id"]  # the run made it
        cells = (
            b["batch_id"],
            b["avatar"],
            b["status"],
            pieces,
            f"${b['cost_usd']:.2f}",
            started,
            run,
        )
        table.add_row(*(Text(str(c)) for c in cells))
    # ids are copied from here: never cut one short, even when piped (80 columns)
    Console(width=max(console.width, 140)).print(table)
