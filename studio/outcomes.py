"""What a batch's pieces came to: outcomes, database rows, stand-in marks, the result.

Pure functions over the steps' outputs, free of Prefect, so the flow only routes
values and the rules for "published", "rejected" or "failed" live in one place.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from studio.batch_verdict import meets_minimum
from studio.request import BatchRequest
from studio.settings import get_settings
from studio.types import (
    AvatarRef,
    BatchResult,
    GeneratedImage,
    Hook,
    HookBatch,
    ImageFailure,
    PieceOutcome,
    PieceSpec,
    PieceStatus,
    SafetyReport,
    SafetyVerdict,
    StoredObject,
)

log = logging.getLogger("studio.batch")

#: verdicts whose pieces are uploaded and published
PUBLISHABLE = {"passed", "retiered", "skipped"}

#: why a degraded piece is held (PUBLISH_DEGRADED=false, the default)
DEGRADED_REASON = "degraded: image is a cached asset of an earlier batch (PUBLISH_DEGRADED=false)"


#: why a passed piece is not published yet
STORED_LOCALLY_REASON = (
    "stored locally: the object store failed at upload; `studio storage-sync` uploads it"
)


def hold_degraded(
    images: dict[str, GeneratedImage],
    verdicts: dict[str, SafetyVerdict],
    publish_degraded: bool,
) -> dict[str, SafetyVerdict]:
    """The verdicts that hold degraded pieces for review instead of publishing them.

    Why: a cached asset reused when every provider failed is a repeat of an earlier
    batch's image; published as new it would be counted (and shown) as fresh content.
    """
    if publish_degraded:
        return {}
    held = {}
    for piece_id, verdict in verdicts.items():
        image = images.get(piece_id)
        if image is not None and image.degraded and verdict.status in PUBLISHABLE:
            held[piece_id] = verdict.model_copy(
                update={"status": "pending_review", "reason": DEGRADED_REASON}
            )
    return held


def piece_outcomes(
    specs: list[PieceSpec],
    images: dict[str, GeneratedImage],
    failures: dict[str, ImageFailure],
    hooks: dict[str, Hook],
    verdicts: dict[str, SafetyVerdict],
    stored: dict[str, StoredObject],
) -> list[PieceOutcome]:
    outcomes = []
    for spec in specs:
        image = images.get(spec.piece_id)
        verdict = verdicts.get(spec.piece_id)
        obj = stored.get(spec.piece_id)
        if image is None and verdict is not None and verdict.status == "rejected":
            status, reason = PieceStatus.REJECTED, verdict.reason  # screened before step 2
        elif image is None:
            status, reason = PieceStatus.FAILED, failures[spec.piece_id].reason
        elif verdict is not None and verdict.status == "rejected":
            status, reason = PieceStatus.REJECTED, verdict.reason
        elif verdict is not None and verdict.status == "pending_review":
            status, reason = PieceStatus.PENDING_REVIEW, verdict.reason
        elif obj is None:
            status, reason = PieceStatus.FAILED, "not stored"
        elif obj.needs_sync:  # kept, not lost: published once storage-sync uploads it
            status, reason = PieceStatus.STORED_LOCALLY, STORED_LOCALLY_REASON
        else:
            status, reason = PieceStatus.PUBLISHED, verdict.reason if verdict else None
        hook = hooks.get(spec.piece_id)
        outcomes.append(
            PieceOutcome(
                piece_id=spec.piece_id,
                index=spec.index,
                template_id=spec.template_id,
                tier=verdict.tier if verdict else spec.tier,
                status=status,
                provider=image.provider if image else None,
                hook=hook.text if hook else None,
                url=obj.url if obj else None,
                storage_key=obj.key if obj else None,
                cost_usd=image.cost_usd if image else 0.0,
                reason=reason,
                degraded=bool(image and image.degraded),
            )
        )
    return outcomes


def stand_in_marks(
    images: dict[str, GeneratedImage],
    hooks: dict[str, Hook],
    verdicts: dict[str, SafetyVerdict],
    stored: dict[str, StoredObject],
) -> dict[str, list[str]]:
    """Per piece, which embedded stand-ins made it, so no preview passes for the real thing."""
    marks: dict[str, list[str]] = {}
    for piece_id, image in images.items():
        piece = marks.setdefault(piece_id, [])
        if image.stand_in:
            piece.append(f"image:{image.provider}")
        hook = hooks.get(piece_id)
        if hook is not None and hook.stand_in:
            piece.append(f"hooks:{hook.source}")
        verdict = verdicts.get(piece_id)
        if verdict is not None and verdict.checked_by == "local":
            piece.append("moderation:local")
        obj = stored.get(piece_id)
        if obj is not None and obj.backend == "local":
            piece.append("storage:local")
    return marks


def piece_row(
    outcome: PieceOutcome,
    spec: PieceSpec,
    avatar: AvatarRef,
    batch_id: str,
    stand_ins: dict[str, list[str]],
) -> dict[str, Any]:
    return {
        "id": outcome.piece_id,
        "avatar_id": avatar.id,
        "batch_id": batch_id,
        "template_id": spec.template_id,
        "prompt": spec.prompt,
        "access_tier": outcome.tier,
        "hook_text": outcome.hook,
        "safety_rating": safety_rating(outcome),
        "status": outcome.status.value,
        "provider": outcome.provider,
        "storage_key": outcome.storage_key,
        "url": outcome.url,
        "cost_usd": outcome.cost_usd,
        "stand_ins": stand_ins.get(outcome.piece_id, []),
        "degraded": outcome.degraded,
    }


def safety_rating(outcome: PieceOutcome) -> str:
    if outcome.status == PieceStatus.REJECTED:
        return "rejected"
    if outcome.status == PieceStatus.PENDING_REVIEW:
        return "pending_review"
    if outcome.status == PieceStatus.FAILED and outcome.provider is None:
        return "unchecked"
    return "approved"


def build_result(
    batch_id: str,
    avatar: AvatarRef,
    request: BatchRequest,
    outcomes: list[PieceOutcome],
    steps: dict[str, float],
    started: float,
    hooks: HookBatch,
    safety: SafetyReport,
    stand_ins: dict[str, list[str]],
) -> BatchResult:
    def count(status: PieceStatus) -> int:
        return sum(1 for o in outcomes if o.status == status)

    image_cost = sum(o.cost_usd for o in outcomes)
    breakdown = {
        "images": round(image_cost, 6),
        "hooks": round(hooks.cost_usd, 6),
        "safety": round(safety.cost_usd, 6),
        "storage": 0.0,
    }
    labels = sorted({mark for marks in stand_ins.values() for mark in marks})
    for label in labels:
        log.info("Stand-in used | %s (embedded default, not a production provider)", label)
    kept = count(PieceStatus.STORED_LOCALLY)
    if kept:
        log.warning(
            "Stored locally | Batch: %s | Pieces: %d | the object store failed at upload;"
            " `studio storage-sync` uploads them and publishes them",
            batch_id, kept,
        )
    return BatchResult(
        batch_id=batch_id,
        avatar_id=avatar.id,
        avatar_name=avatar.name,
        status=batch_status(request.num_pieces, count(PieceStatus.FAILED)),
        requested=request.num_pieces,
        published=count(PieceStatus.PUBLISHED),
        rejected=count(PieceStatus.REJECTED),
        failed=count(PieceStatus.FAILED),
        pending_review=count(PieceStatus.PENDING_REVIEW),
        cost_usd=round(sum(breakdown.values()), 6),
        total_seconds=time.perf_counter() - started,
        step_seconds={k: round(v, 4) for k, v in steps.items()},
        cost_breakdown=breakdown,
        stand_ins=labels,
        pieces=outcomes,
        degraded=sum(1 for o in outcomes if o.degraded),
        stored_locally=kept,
    )


def batch_status(requested: int, failed: int) -> Literal["completed", "failed"]:
    """Below min_success_ratio a batch has failed, whatever it saved (exact fractions)."""
    ratio = get_settings().min_success_ratio
    return "completed" if meets_minimum(requested - failed, requested, ratio) else "failed"


def batch_row_values(result: BatchResult) -> dict[str, Any]:
    return {
        "status": result.status,
        "step_seconds": result.step_seconds,
        "cost_breakdown": result.cost_breakdown,
        "cost_usd": result.cost_usd,
        "published": result.published,
        "rejected": result.rejected,
        "failed": result.failed,
        "pending_review": result.pending_review,
        "stand_ins": result.stand_ins,
        "degraded": result.degraded,
    }
