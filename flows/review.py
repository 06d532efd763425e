"""The `review` flow (issue 19): held pieces judged by a person in the Prefect UI.

What a run does:
1. gathers the pieces held as `pending_review` (of a batch, an avatar, or all;
   studio/review, the same code path as `studio review`), at most FORM_LIMIT of them;
2. publishes a markdown artifact a reviewer judges from: each piece's image (a
   short-lived presigned link, or a preview embedded when the store is this host's
   disk), caption/hook, tier, why it was held and its moderation scores;
3. **suspends** with `suspend_flow_run(wait_for_input=<ReviewForm>)`: the UI shows the
   typed form (flows/review_form.py) on the run's page ("Resume"). Suspend, not pause:
   the run's process exits and the worker's slot is free while the form waits (hours,
   days); a paused run would keep its process and slot. Suspending needs a deployment
   run (Prefect reschedules it on resume), so the flow refuses to wait when called
   without one: `studio review` is the command-line path then;
4. when the form is submitted (UI, or `resume_flow_run(run_input=...)` through the
   API) Prefect runs the flow again from the start; the piece list it suspended with
   is read back from the run's own input store (`review-pieces`, server-side, so any
   worker host resumes it), the answers become `Decision`s, `apply_decisions` applies
   them (idempotent: approving twice publishes once), one log line per piece and a
   result artifact say what came of each.

One open review run per avatar: a run that finds another review run of the same scope
already waiting (Suspended) or started before it steps back at once, saying which run
holds the form; pieces held meanwhile are picked up by the review run started when
that one is resumed (it starts a follow-up run when pieces are still held).
A form not answered within REVIEW_TIMEOUT_SECONDS (7 days by default) fails the run;
its pieces stay held and the next batch's automation, or `studio review`, picks them up.
"""

from __future__ import annotations

import base64
import io
import os
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.flow_runs import suspend_flow_run
from prefect.input.actions import create_flow_run_input, read_flow_run_input
from prefect.runtime import deployment, flow_run
from prefect.states import Completed, Failed, State

from flows.review_events import emit_decision_events
from flows.review_form import FORM_LIMIT, build_form, decisions_from
from studio.db.engine import session_scope
from studio.review import HeldPiece, apply_decisions, held_pieces

#: the deployment (prefect.yaml) the automation runs and follow-up runs use
REVIEW_DEPLOYMENT = "review/review"
#: the run's own input store key of the pieces its form asks about
SNAPSHOT_KEY = "review-pieces"
#: the suspend's key: the same on every execution of the run, so the resumed run gets
#: the answers instead of suspending again
SUSPEND_KEY = "review-form"
#: tag of a follow-up run, naming the run that started it (it does not wait for it)
FOLLOWS_TAG = "follows:"
OPEN_STATES = [StateType.PAUSED, StateType.RUNNING, StateType.PENDING, StateType.SCHEDULED]
PREVIEW_PIXELS = 768


def review_timeout_seconds() -> int:
    return int(os.environ.get("REVIEW_TIMEOUT_SECONDS") or 7 * 24 * 3600)


def _short(text: str | None, limit: int = 60) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _scores(scores: dict[str, float], top: int = 4) -> str:
    ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)[:top]
    return ", ".join(f"{k} {v:.2f}" for k, v in ranked) or "none recorded"


def snapshot_of(piece: Any) -> dict[str, Any]:
    """What the form keeps of a held piece: its id and the words a reviewer reads."""
    label = f"{piece.avatar_name} · {piece.tier} · {_short(piece.hook_text or piece.prompt, 50)}"
    why = piece.reason or "held"
    return {
        "piece_id": piece.piece_id,
        "label": label,
        "description": f"held: {_short(why, 80)}; scores: {_scores(piece.scores)}",
    }


def _preview(path: str) -> str | None:
    """A JPEG data URI, PREVIEW_PIXELS wide at most, of an image on this host's disk."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((PREVIEW_PIXELS, PREVIEW_PIXELS))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=80)
    except Exception:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def review_markdown(pieces: list[Any], title: str) -> str:
    """The artifact a reviewer judges from, one section per piece, numbered as the form."""
    lines = [
        f"# {title}",
        "",
        f"{len(pieces)} piece(s) held for review. Decide each in this run's form "
        "(**Resume** on the run's page): hold, approve, reject (with a reason) or "
        "capa1/capa2/capa3 to re-tier and approve. Image links are short-lived "
        "(presigned); `studio review list` mints fresh ones.",
    ]
    for position, piece in enumerate(pieces, start=1):
        image = piece.image_url or (_preview(piece.image_path) if piece.image_path else None)
        expires = (
            f" (link valid until {piece.image_url_expires_at:%Y-%m-%d %H:%M} UTC)"
            if piece.image_url and piece.image_url_expires_at
            else ""
        )
        lines += [
            "",
            f"## Piece {position}: {piece.avatar_name} · {piece.tier}",
            "",
            f"![piece {position}]({image}){expires}" if image else "_no image available_",
            "",
            f"- **Hook / caption:** {_short(piece.hook_text, 300) or '—'}",
            f"- **Prompt:** {_short(piece.prompt, 300)}",
            f"- **Tier:** {piece.tier}",
            f"- **Why held:** {piece.reason or '—'}"
            + (" (degraded: cached image)" if piece.degraded else "")
            + (f" (stand-ins: {', '.join(piece.stand_ins)})" if piece.stand_ins else ""),
            f"- **Moderation:** {_moderation_line(piece)}",
            f"- **Batch:** {piece.batch_id} · **piece id:** `{piece.piece_id}`",
        ]
    return "\n".join(lines)


def _moderation_line(piece: HeldPiece) -> str:
    """What moderation said; a piece held because the moderator did not answer was not
    checked at all, and must not read as "checked, flagged nothing"."""
    if (piece.reason or "").startswith("moderation unavailable"):
        return f"not checked: {piece.checked_by or 'the moderator'} did not answer"
    return (
        f"checked by {piece.checked_by or '—'}; flagged "
        f"{', '.join(piece.categories) or 'nothing'}; scores {_scores(piece.scores, 13)}"
    )


def _scope(avatar: str | None, batch_id: str | None) -> str:
    parts = [f"avatar {avatar}" if avatar else "", f"batch {batch_id}" if batch_id else ""]
    return ", ".join(p for p in parts if p) or "all avatars"


def _artifact_key(avatar: str | None, batch_id: str | None, kind: str) -> str:
    import re

    scope = re.sub(r"[^a-z0-9]+", "-", (avatar or batch_id or "all").lower()).strip("-")
    return f"{kind}-{scope or 'all'}"[:60]


def open_review_runs(avatar: str | None, batch_id: str | None) -> list[Any]:
    """Other review runs of this scope that hold (or will hold) its form: any waiting
    (Paused/Suspended), and any not finished that was created before this one."""
    me = UUID(str(flow_run.id))
    with get_client(sync_client=True) as client:
        mine = client.read_flow_run(me)
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["review"])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=OPEN_STATES))
            ),
        )
    followed = {t[len(FOLLOWS_TAG):] for t in (mine.tags or []) if t.startswith(FOLLOWS_TAG)}
    found = []
    for run in runs:
        params = run.parameters or {}
        if run.id == me or str(run.id) in followed:
            continue
        if (params.get("avatar"), params.get("batch_id")) != (avatar, batch_id):
            continue
        waiting = run.state is not None and run.state.type == StateType.PAUSED
        earlier = (run.created, str(run.id)) < (mine.created, str(me))
        if waiting or earlier:
            found.append(run)
    return found


def _read_snapshot() -> list[dict[str, Any]] | None:
    try:
        value = read_flow_run_input(SNAPSHOT_KEY)
    except Exception:
        return None
    return value if isinstance(value, list) else None


def _start_follow_up(avatar: str | None, batch_id: str | None, logger: Any) -> None:
    """Pieces still held after this form: a review run of the same scope asks again."""
    run = run_deployment(
        REVIEW_DEPLOYMENT,
        parameters={"avatar": avatar, "batch_id": batch_id},
        timeout=0,
        as_subflow=False,
        tags=[f"{FOLLOWS_TAG}{flow_run.id}"],
    )
    logger.info("Review follow-up | %s still has held pieces | Run: %s", _scope(avatar, batch_id),
                run.name)


def _run_name() -> str:
    params = flow_run.parameters or {}
    return f"review-{params.get('avatar') or params.get('batch_id') or 'all'}"


@flow(name="review", flow_run_name=_run_name, log_prints=False)
def review(avatar: str | None = None, batch_id: str | None = None) -> State:
    """Held pieces of `avatar` (id or name) and/or `batch_id` (both empty: all), judged
    in this run's form; the run suspends (its process exits, its worker slot is freed)
    until the form is submitted, then applies the decisions."""
    logger = get_run_logger()
    scope = _scope(avatar, batch_id)
    pieces = _read_snapshot()
    if pieces is None:  # the first execution: gather, show, remember, then wait
        with session_scope() as session:
            held = held_pieces(session, avatar=avatar, batch_id=batch_id)
        if not held:
            message = f"No held pieces for {scope}: nothing to review."
            logger.info(message)
            return Completed(message=message)
        if not deployment.id:
            message = (
                "The review form waits only in a deployment run (suspend needs one): run "
                f"`{REVIEW_DEPLOYMENT}` or use `studio review list/approve/reject`."
            )
            logger.error(message)
            return Failed(message=message)
        others = open_review_runs(avatar, batch_id)
        if others:
            names = ", ".join(r.name for r in others)
            message = (
                f"Review of {scope} already open in run {names}: its form is the one to "
                "answer (pieces held since are asked in the run that follows it)."
            )
            logger.info(message)
            return Completed(name="Skipped", message=message)
        shown = held[:FORM_LIMIT]
        title = f"Review: {len(shown)} held piece(s) of {scope}"
        create_markdown_artifact(
            markdown=review_markdown(shown, title),
            key=_artifact_key(avatar, batch_id, "review"),
            description=title + (f" (of {len(held)}; the rest follow)" if len(held) > len(shown)
                                 else ""),
        )
        pieces = [snapshot_of(p) for p in shown]
        create_flow_run_input(SNAPSHOT_KEY, pieces)
        logger.info(
            "Review waiting | %s | %d piece(s) | suspending: the form is on this run's page, "
            "no process or worker slot is held while it waits", scope, len(pieces),
        )
    form = build_form(pieces)
    answers = suspend_flow_run(
        wait_for_input=form, timeout=review_timeout_seconds(), key=SUSPEND_KEY
    )
    decisions, skipped = decisions_from(answers, pieces)
    applied = apply_decisions(decisions) if decisions else []
    emit_decision_events(applied)  # studio.piece.published / .rejected, after the commits
    outcomes = {o.piece_id: o for o in applied}
    rows = []
    for position, piece in enumerate(pieces, start=1):
        outcome = outcomes.get(piece["piece_id"])
        if outcome is None:
            detail = skipped.get(piece["piece_id"], "no decision")
            row = {"piece": position, "piece_id": piece["piece_id"], "action": "hold",
                   "result": "held", "status": "pending_review", "tier": "", "detail": detail}
        else:
            row = {"piece": position, "piece_id": piece["piece_id"], "action": outcome.action,
                   "result": outcome.result, "status": outcome.status or "",
                   "tier": outcome.tier or "", "detail": outcome.detail or ""}
        rows.append(row)
        logger.info(
            "Review decision | Piece: %s | %s -> %s | Status: %s%s",
            piece["piece_id"], row["action"], row["result"], row["status"] or "-",
            f" | {row['detail']}" if row["detail"] else "",
        )
    reviewer = str(getattr(answers, "reviewer", "") or "").strip()
    n_applied = sum(1 for r in rows if r["result"] == "applied")
    held_left = sum(1 for r in rows if r["result"] == "held")
    summary = (
        f"Review of {scope} by {reviewer or 'unknown'}: {n_applied} applied, "
        f"{len(rows) - n_applied - held_left} not (already decided or refused), "
        f"{held_left} left held."
    )
    create_table_artifact(
        table=rows, key=_artifact_key(avatar, batch_id, "review-result"), description=summary
    )
    with session_scope() as session:
        still_held = held_pieces(session, avatar=avatar, batch_id=batch_id, links=False)
    if still_held and deployment.id:
        _start_follow_up(avatar, batch_id, logger)
    logger.info(summary)
    return Completed(message=summary)
