"""`studio review`: list held pieces, approve or reject them (issue 19).

Why its own module: the review queue is a reviewer's daily tool; it shares its code
path with the `review` flow's form (studio/review/), so a decision made here or in the
Prefect UI is the same decision. Unknown piece ids exit 2 naming them, and then no
decision is applied at all; a refused decision (hard-blocked, capa1 not allowed) exits 1
after the others are applied, each outcome on its own line.
"""

from __future__ import annotations

import getpass
import os
from typing import Annotated

import typer
from rich.markup import escape

from cli.output import console, print_json, refuse
from studio.request import BatchRequestError

review_app = typer.Typer(help="Review pieces held as pending_review.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="print JSON (for scripts)")]
ReviewerOption = Annotated[
    str | None, typer.Option("--reviewer", help="who decides (default: $USER)")
]
PiecesArgument = Annotated[list[str], typer.Argument(help="piece ids", show_default=False)]


def _reviewer(given: str | None) -> str:
    name = (given or os.environ.get("USER") or "").strip()
    if not name:
        try:
            name = getpass.getuser()
        except Exception:
            name = ""
    if not name:
        refuse(BatchRequestError("reviewer", "name the reviewer with --reviewer (no $USER)"))
    return name


@review_app.command("list")
def review_list(
    avatar: Annotated[str | None, typer.Option("--avatar", help="avatar id or name")] = None,
    batch: Annotated[str | None, typer.Option("--batch", help="batch id")] = None,
    as_json: JsonOption = False,
) -> None:
    """List the pieces held for review, oldest first, with why they were held.

    Image links are minted now and expire after PRESIGNED_URL_TTL_SECONDS; with the
    local store the staged file's path is shown instead."""
    from studio.db.engine import session_scope
    from studio.review import held_pieces

    with session_scope() as session:
        held = held_pieces(session, avatar=avatar, batch_id=batch)
    if as_json:
        print_json([piece.model_dump(mode="json") for piece in held])
        return
    if not held:
        console.print("no pieces held for review")
        return
    # one block per piece, not a table: a presigned link is longer than a terminal line
    for piece in held:
        flags = " degraded" if piece.degraded else ""
        lines = [
            f"[bold]{piece.piece_id}[/bold] {piece.tier}{flags} avatar {escape(piece.avatar_name)}"
            f" batch {piece.batch_id}",
            f"  held: {escape(piece.reason or 'unknown')}",
            f"  hook: {escape(piece.hook_text or '')}",
            f"  image: {escape(piece.image_url or piece.image_path or '(staged image gone)')}",
        ]
        if piece.categories:
            lines.insert(2, f"  flagged: {escape(', '.join(piece.categories))}")
        console.print("\n".join(lines), soft_wrap=True, highlight=False)
    console.print(f"{len(held)} held for review", highlight=False)
    expiry = next((p.image_url_expires_at for p in held if p.image_url_expires_at), None)
    if expiry is not None:
        console.print(f"image links expire at {expiry:%Y-%m-%d %H:%M:%S} UTC")


def _decide(
    pieces: list[str],
    action: str,
    reason: str | None,
    reviewer: str | None,
    tier: str | None,
    as_json: bool,
) -> None:
    from pydantic import ValidationError

    from studio.db.engine import session_scope
    from studio.review import Decision, apply_decisions, unknown_pieces

    if not pieces:
        refuse(BatchRequestError("PIECE", "name at least one piece id"))
    name = _reviewer(reviewer)
    try:
        decisions = [
            Decision(piece_id=p, action=action, tier=tier, reason=reason, reviewer=name)  # type: ignore[arg-type]
            for p in dict.fromkeys(pieces)
        ]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first.get("loc", ())) or "decision"
        refuse(BatchRequestError(field, str(first.get("msg", "invalid"))))
    with session_scope() as session:
        unknown = unknown_pieces(session, pieces)
    if unknown:
        refuse(
            BatchRequestError(
                "PIECE", f"unknown piece ids: {', '.join(unknown)} (nothing was applied)"
            )
        )
    outcomes = apply_decisions(decisions)
    from flows.review_events import emit_decision_events

    emit_decision_events(outcomes)
    if as_json:
        print_json([o.model_dump(mode="json") for o in outcomes])
    else:
        for o in outcomes:
            where = f" {o.url or o.storage_key}" if o.result == "applied" and o.storage_key else ""
            detail = f" ({escape(o.detail)})" if o.detail else ""
            console.print(
                f"{o.piece_id}: {o.result} -> {o.status} {o.tier or ''}{escape(where)}{detail}",
                soft_wrap=True,
                highlight=False,
            )
    if any(o.result == "refused" for o in outcomes):
        raise typer.Exit(code=1)


@review_app.command("approve")
def review_approve(
    pieces: PiecesArgument,
    reason: Annotated[str | None, typer.Option("--reason", help="why (recorded)")] = None,
    reviewer: ReviewerOption = None,
    tier: Annotated[
        str | None,
        typer.Option("--tier", help="re-tier: capa1 (public), capa2 or capa3 (private)"),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Approve held pieces: store each where its tier belongs and publish it."""
    if tier is not None and tier not in ("capa1", "capa2", "capa3"):
        refuse(BatchRequestError("tier", f"{tier!r} is not capa1, capa2 or capa3"))
    _decide(pieces, "approve", reason, reviewer, tier, as_json)


@review_app.command("reject")
def review_reject(
    pieces: PiecesArgument,
    reason: Annotated[str, typer.Option("--reason", help="why (required, recorded)")],
    reviewer: ReviewerOption = None,
    as_json: JsonOption = False,
) -> None:
    """Reject held pieces with the reviewer's reason."""
    _decide(pieces, "reject", reason, reviewer, None, as_json)
