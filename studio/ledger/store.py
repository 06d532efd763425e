"""The ledger's rows: reserve against the budgets, mark billed, settle, record.

Why this shape: money is data, and a call's output can be lost after it was billed
(download failed, process killed mid-poll). So a billed call's row is written BEFORE the
call (`reserved`, holding its price against the budgets), marked `billed` with the
provider's job id the moment the provider reports it, and settled with its outcome
afterwards; a call that never reached billing (4xx on create, connection refused) is
`released` and counts for nothing. Sums over `reserved` + `billed` rows are what a
budget is checked against, so calls in flight are counted before they finish.

Reservations are atomic in the database, so concurrent calls (threads, processes,
machines) cannot pass a budget together: on PostgreSQL a transaction-scoped advisory
lock on the avatar serialises the check-and-insert of one avatar's reservations (its
batches and its day); on SQLite the transaction's first statement is a write, which
takes the database's single write lock before the sums are read.

The avatar daily budget is the avatar's own (its profile's `daily_budget_usd`) when it
has one, else AVATAR_DAILY_BUDGET_USD (`avatar_daily_budget`).

Every method opens its own short transaction through `session_scope()`, so rows are
durable as soon as a method returns.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time

from sqlalchemy import Table, func, select, text, update
from sqlalchemy.orm import Session

from studio.db.engine import session_scope
from studio.db.models import Avatar, ContentPiece, CostLedgerEntry
from studio.ledger.settings import LedgerSettings

log = logging.getLogger("studio.ledger")

_TABLE: Table = CostLedgerEntry.__table__  # type: ignore[assignment]
#: statuses a budget counts: billed, and reserved by calls in flight
COUNTED = ("reserved", "billed")
#: outcomes of a billed call whose output never arrived: its job may still be fetched
RECOVERABLE = ("lost", "timeout", "failed", "cancelled")
_EPSILON = 1e-9


@dataclass(frozen=True)
class CallKey:
    """Which call: its kind, provider, batch, avatar and the pieces it covers."""

    kind: str
    provider: str
    batch_id: str | None
    avatar_id: str | None
    piece_ids: Sequence[str] = field(default_factory=tuple)

    @property
    def piece_id(self) -> str | None:
        return self.piece_ids[0] if len(self.piece_ids) == 1 else None


@dataclass(frozen=True)
class Reservation:
    """The answer to a reservation: a row id to settle, or a refusal naming the budget."""

    row_id: str
    accepted: bool
    #: for a refusal: which budget ("batch" or "avatar daily"), its size and what is spent
    budget_name: str | None = None
    budget_usd: float | None = None
    spent_usd: float | None = None


def _now() -> datetime:
    return datetime.now(UTC)


def day_start(moment: datetime | None = None) -> datetime:
    moment = moment or _now()
    return datetime.combine(moment.astimezone(UTC).date(), time(0), tzinfo=UTC)


def _lock_avatar(session: Session, avatar_id: str | None) -> None:
    """Serialise reservations of one avatar (see the module docstring)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
            {"key": f"studio.cost_ledger:{avatar_id or '-'}"},
        )
    else:  # SQLite: a write first, so this transaction holds the write lock from here on
        session.execute(update(_TABLE).where(_TABLE.c.id == "").values(id=_TABLE.c.id))


def _counted_sum(session: Session, *where: object) -> float:
    stmt = select(func.coalesce(func.sum(_TABLE.c.price_usd), 0.0)).where(
        _TABLE.c.status.in_(COUNTED), *where  # type: ignore[arg-type]
    )
    return float(session.scalar(stmt) or 0.0)


class CostLedger:
    """The ledger in the configured database (`DATABASE_URL`, read at each call)."""

    def __init__(self, settings: LedgerSettings | None = None) -> None:
        self._settings = settings

    @property
    def settings(self) -> LedgerSettings:
        return self._settings or LedgerSettings()

    # --- before a call -------------------------------------------------------------

    def reserve(
        self, call: CallKey, price_usd: float, *, estimate_usd: float | None = None
    ) -> Reservation:
        """Write the call's row, `reserved` at its price when every budget allows it.

        Refused calls get a `released` row with outcome `budget`, so the ledger also says
        what the budget stopped. A call priced $0 is never refused.
        """
        with session_scope() as session:
            return self._reserve(session, call, price_usd, estimate_usd)

    def open_image_call(self, call: CallKey, price_usd: float) -> tuple[str | None, Reservation]:
        """`recoverable_job` and `reserve` for one image attempt, in one transaction."""
        assert call.piece_id is not None
        with session_scope() as session:
            resume = self._recoverable_job(session, call.piece_id, call.provider)
            return resume, self._reserve(session, call, price_usd, None)

    def _reserve(
        self, session: Session, call: CallKey, price_usd: float, estimate_usd: float | None
    ) -> Reservation:
        budgets = self.settings
        row_id = str(uuid.uuid4())
        now = _now()
        refusal: tuple[str, float, float] | None = None
        # an avatar may have a budget of its own with the studio's turned off
        if price_usd > 0 and (budgets.any_budget or call.avatar_id is not None):
            _lock_avatar(session, call.avatar_id)
            refusal = self._over_budget(session, call, price_usd, budgets, now)
        session.execute(
            _TABLE.insert().values(
                id=row_id,
                batch_id=call.batch_id,
                avatar_id=call.avatar_id,
                piece_id=call.piece_id,
                piece_ids=list(call.piece_ids),
                kind=call.kind,
                provider=call.provider,
                price_usd=price_usd,
                estimate_usd=estimate_usd,
                status="released" if refusal else "reserved",
                outcome="budget" if refusal else None,
                created_at=now,
                settled_at=now if refusal else None,
            )
        )
        if refusal is None:
            return Reservation(row_id, True)
        name, budget, spent = refusal
        return Reservation(row_id, False, name, budget, spent)

    def _over_budget(
        self,
        session: Session,
        call: CallKey,
        price: float,
        budgets: LedgerSettings,
        now: datetime,
    ) -> tuple[str, float, float] | None:
        if budgets.batch_budget_usd is not None and call.batch_id is not None:
            spent = _counted_sum(session, _TABLE.c.batch_id == call.batch_id)
            if spent + price > budgets.batch_budget_usd + _EPSILON:
                return "batch", budgets.batch_budget_usd, spent
        if call.avatar_id is None:
            return None
        daily = avatar_daily_budget(session, call.avatar_id, budgets)
        if daily is not None:
            spent = _counted_sum(
                session,
                _TABLE.c.avatar_id == call.avatar_id,
                _TABLE.c.created_at >= day_start(now),
            )
            if spent + price > daily + _EPSILON:
                return "avatar daily", daily, spent
        return None

    def recoverable_job(self, piece_id: str, provider: str) -> str | None:
        """The job id of this piece's billed call at this provider whose output never came.

        Rows this piece left unsettled at this provider belong to an attempt that died
        (a piece runs one attempt at a time): reserved ones are released, billed ones
        marked `lost`, so they are recoverable and no longer count as in flight.
        """
        with session_scope() as session:
            return self._recoverable_job(session, piece_id, provider)

    @staticmethod
    def _recoverable_job(session: Session, piece_id: str, provider: str) -> str | None:
        now = _now()
        mine = (_TABLE.c.piece_id == piece_id, _TABLE.c.provider == provider)
        session.execute(
            update(_TABLE)
            .where(*mine, _TABLE.c.outcome.is_(None), _TABLE.c.status == "reserved")
            .values(status="released", outcome="lost", settled_at=now)
        )
        session.execute(
            update(_TABLE)
            .where(*mine, _TABLE.c.outcome.is_(None), _TABLE.c.status == "billed")
            .values(outcome="lost", settled_at=now)
        )
        return session.scalar(
            select(_TABLE.c.job_id)
            .where(
                *mine,
                _TABLE.c.status == "billed",
                _TABLE.c.job_id.is_not(None),
                _TABLE.c.outcome.in_(RECOVERABLE),
            )
            .order_by(_TABLE.c.created_at.desc())
            .limit(1)
        )

    # --- during and after a call ---------------------------------------------------

    def mark_billed(self, row_id: str, job_id: str | None) -> None:
        """The provider accepted the job: it is billed, whatever happens to its output."""
        with session_scope() as session:
            session.execute(
                update(_TABLE).where(_TABLE.c.id == row_id).values(status="billed", job_id=job_id)
            )

    def settle(
        self,
        row_id: str,
        outcome: str,
        *,
        billed: bool,
        price_usd: float | None = None,
        job_id: str | None = None,
    ) -> None:
        """The call ended: `billed` keeps its price counted, otherwise it is released."""
        values: dict[str, object] = {
            "status": "billed" if billed else "released",
            "outcome": outcome,
            "settled_at": _now(),
        }
        if price_usd is not None:
            values["price_usd"] = price_usd
        if job_id is not None:
            values["job_id"] = job_id
        with session_scope() as session:
            session.execute(update(_TABLE).where(_TABLE.c.id == row_id).values(**values))

    def mark_job(self, piece_id: str, provider: str, job_id: str, outcome: str) -> None:
        """An earlier billed job's fate: `recovered` (its output was fetched after all) or
        `abandoned` (a new job replaced it), so it is not offered for recovery again."""
        with session_scope() as session:
            session.execute(
                update(_TABLE)
                .where(
                    _TABLE.c.piece_id == piece_id,
                    _TABLE.c.provider == provider,
                    _TABLE.c.job_id == job_id,
                    _TABLE.c.status == "billed",
                )
                .values(outcome=outcome)
            )

    def record(
        self,
        call: CallKey,
        price_usd: float,
        outcome: str = "ok",
        *,
        job_id: str | None = None,
        estimate_usd: float | None = None,
    ) -> str:
        """A call billed and finished at once (moderation: free, nothing to reserve)."""
        return self.record_many([(call, price_usd, outcome, job_id, estimate_usd)])[0]

    def record_many(
        self,
        calls: Sequence[tuple[CallKey, float, str, str | None, float | None]],
    ) -> list[str]:
        """Several finished calls in one statement; a call without a batch takes its
        batch and avatar from its first piece's row (the plan is written before step 2)."""
        if not calls:
            return []
        now = _now()
        ids = [str(uuid.uuid4()) for _ in calls]
        with session_scope() as session:
            owners = _owners(session, [c.piece_ids[0] for c, *_ in calls if c.piece_ids])
            rows = []
            for row_id, (call, price, outcome, job_id, estimate) in zip(ids, calls, strict=True):
                batch_id, avatar_id = call.batch_id, call.avatar_id
                if (batch_id is None or avatar_id is None) and call.piece_ids:
                    batch_id, avatar_id = owners.get(call.piece_ids[0], (batch_id, avatar_id))
                rows.append({
                    "id": row_id, "batch_id": batch_id, "avatar_id": avatar_id,
                    "piece_id": call.piece_id, "piece_ids": list(call.piece_ids),
                    "kind": call.kind, "provider": call.provider, "job_id": job_id,
                    "price_usd": price, "estimate_usd": estimate, "status": "billed",
                    "outcome": outcome, "created_at": now, "settled_at": now,
                })
            session.execute(_TABLE.insert(), rows)
        return ids


def avatar_daily_budget(
    session: Session, avatar_id: str, budgets: LedgerSettings
) -> float | None:
    """What `avatar_id`'s batches may spend in a UTC day: its profile's daily budget,
    else AVATAR_DAILY_BUDGET_USD (None: no daily budget).

    Why read here, from its row: every billed call of the avatar (images, hooks, from
    any process) passes this check inside the reservation's transaction, so a budget
    changed with `studio avatar update` holds from the next call on."""
    from studio.avatars import to_ref  # studio.avatars imports the request, not the ledger

    row = session.get(Avatar, avatar_id)
    own = None
    if row is not None:
        try:
            own = to_ref(row).daily_budget_usd
        except (ValueError, TypeError) as exc:  # a profile unreadable: the studio's budget
            log.warning("Avatar %s: its daily budget is unreadable (%s)", avatar_id, exc)
    return own if own is not None else budgets.avatar_daily_budget_usd


def _owners(session: Session, piece_ids: list[str]) -> dict[str, tuple[str, str]]:
    if not piece_ids:
        return {}
    rows = session.execute(
        select(ContentPiece.id, ContentPiece.batch_id, ContentPiece.avatar_id).where(
            ContentPiece.id.in_(set(piece_ids))
        )
    )
    return {piece: (batch, avatar) for piece, batch, avatar in rows}


