"""Prefect events for reviewers' decisions: `studio.piece.published` / `studio.piece.rejected`.

Why here and not in studio/review: the domain imports no orchestrator (ARCHITECTURE.md,
tests/test_import_contract.py); it returns outcomes that carry the ids, and whoever
applied them (the `review` flow, `studio review`) announces them, after the commit.
Events carry ids, the tier, the reviewer and the object key, never a prompt, a caption
or a presigned link (capa1's lasting public URL only).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prefect.events import emit_event

from studio.review import DecisionOutcome

log = logging.getLogger("studio.review")


def _api_configured() -> bool:
    """A Prefect API to send to: without one, emitting would boot a temporary server at
    the command line's exit just to drop the events with it."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def emit_decision_events(outcomes: Iterable[DecisionOutcome]) -> int:
    """One event per applied decision (already-decided and refused ones emit nothing, so
    approving twice announces once); the number emitted."""
    outcomes = list(outcomes)
    emitted = 0
    if not _api_configured():
        applied = sum(1 for o in outcomes if o.result == "applied")
        if applied:
            log.info(
                "Review events not emitted | %d decision(s) | no Prefect API configured "
                "(PREFECT_API_URL); the rows record them", applied,
            )
        return 0
    for outcome in outcomes:
        if outcome.result != "applied":
            continue
        try:
            emit_event(
                event=f"studio.piece.{outcome.status}",
                resource={
                    "prefect.resource.id": f"studio.piece.{outcome.piece_id}",
                    "studio.avatar.id": outcome.avatar_id or "",
                    "studio.batch.id": outcome.batch_id or "",
                },
                related=[
                    {
                        "prefect.resource.id": f"studio.batch.{outcome.batch_id or ''}",
                        "prefect.resource.role": "batch",
                    }
                ],
                payload={
                    "tier": outcome.tier,
                    "decision": outcome.action,
                    "reviewer": outcome.reviewer,
                    "storage_key": outcome.storage_key,
                    "url": outcome.url if outcome.tier == "capa1" else None,
                },
            )
            emitted += 1
        except Exception as exc:  # the decision is committed; an event outage must not undo it
            log.warning("Review event not emitted | Piece: %s | %s", outcome.piece_id, exc)
    return emitted
