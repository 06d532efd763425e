"""Prefect events for a finished batch: one summary event and one per breached alert.

Events carry ids, counts, timings and costs only — never prompts, hooks or secrets.
"""

from __future__ import annotations

import logging

from prefect.events import emit_event

from studio.alerts import Alert, evaluate
from studio.types import BatchResult

log = logging.getLogger("studio.batch")

#: a batch ended with pieces held for review (deployments/automations.py answers it)
REVIEW_REQUESTED = "studio.batch.review-requested"


def emit_batch_events(
    result: BatchResult, *, hook_failures: int = 0, cache_hit_percent: float | None = None
) -> list[Alert]:
    resource = {
        "prefect.resource.id": f"studio.batch.{result.batch_id}",
        "prefect.resource.name": f"content-batch {result.avatar_name}",
        "studio.avatar.id": result.avatar_id,
    }
    emit_event(
        event=f"studio.batch.{result.status}",
        resource=resource,
        payload={
            "requested": result.requested,
            "published": result.published,
            "rejected": result.rejected,
            "failed": result.failed,
            "pending_review": result.pending_review,
            "cost_usd": result.cost_usd,
            "total_seconds": round(result.total_seconds, 3),
            "step_seconds": result.step_seconds,
        },
    )
    if result.pending_review:
        # issue 19: the "studio: held pieces reviewed" automation starts a review run
        # of this avatar on it (automations match resources, not payload values)
        emit_event(
            event=REVIEW_REQUESTED,
            # the name too: the review run is named and scoped by it (review-<name>)
            resource={**resource, "studio.avatar.name": result.avatar_name},
            payload={"pending_review": result.pending_review, "status": result.status},
        )
    alerts = evaluate(result, hook_failures=hook_failures, cache_hit_percent=cache_hit_percent)
    for alert in alerts:
        log.warning(
            "Alert %s | %s | value %.3f, threshold %.3f",
            alert.name,
            alert.message,
            alert.value,
            alert.threshold,
        )
        emit_event(
            event=f"studio.alert.{alert.name}",
            resource=resource,
            payload={
                "level": alert.level,
                "message": alert.message,
                "value": alert.value,
                "threshold": alert.threshold,
            },
        )
    return alerts


def emit_budget_reached(result: BatchResult, refused_calls: int) -> None:
    """`studio.alert.budget-reached`: a budget stopped billed calls of this batch."""
    from studio.ledger.settings import LedgerSettings

    budgets = LedgerSettings()
    emit_event(
        event="studio.alert.budget-reached",
        resource={
            "prefect.resource.id": f"studio.batch.{result.batch_id}",
            "prefect.resource.name": f"content-batch {result.avatar_name}",
            "studio.avatar.id": result.avatar_id,
        },
        payload={
            "level": "warning",
            "message": "a spending budget stopped billed provider calls",
            "spent_usd": result.cost_usd,
            "batch_budget_usd": budgets.batch_budget_usd,
            "avatar_daily_budget_usd": budgets.avatar_daily_budget_usd,
            "refused_calls": refused_calls,
        },
    )
