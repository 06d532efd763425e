"""Serve every deployment from this process, without a work pool or worker.

The quickest way to get schedules and UI-triggered runs on one machine:
`python -m deployments.serve` (against `prefect server start` or Prefect Cloud).
For several machines, use `prefect deploy --all` and workers instead.
"""

from __future__ import annotations

import os

from prefect import serve

from flows.content_batch import content_batch
from flows.health_check import health_check
from flows.review import review
from flows.scheduled import scheduled_batches
from flows.storage_sync import storage_sync

#: seconds between the serving process's looks for runs to start, unless
#: PREFECT_RUNNER_POLL_FREQUENCY says otherwise: Prefect's 10 s would make a batch
#: submitted from the UI or API wait ~5 s on average before it starts (issue 20); with
#: 0.5 s it waits ~0.25 s, as a worker started the README's way does
QUERY_SECONDS = 0.5


def query_seconds() -> float:
    """PREFECT_RUNNER_POLL_FREQUENCY when the operator set it, else `QUERY_SECONDS`."""
    configured = os.environ.get("PREFECT_RUNNER_POLL_FREQUENCY")
    return float(configured) if configured else QUERY_SECONDS


CADENCES = {"daily": ("0 6 * * *", 50), "weekly": ("0 6 * * 1", 20), "monthly": ("0 6 1 * *", 100)}


def build_deployments() -> list:
    deployments = [
        content_batch.to_deployment(
            name="on-demand",
            parameters={"num_pieces": 10},  # the run form asks for the avatar
            tags=["content", "on-demand"],
        ),
        health_check.to_deployment(name="health", interval=300, tags=["monitoring"]),
        storage_sync.to_deployment(name="storage-sync", interval=900, tags=["storage"]),
        # the held-pieces automation starts review/review; a suspended review run is
        # resumed by this process like any other run of its deployments
        review.to_deployment(name="review", tags=["review"]),
    ]
    for cadence, (cron, pieces) in CADENCES.items():
        deployments.append(
            scheduled_batches.to_deployment(
                name=cadence,
                cron=cron,
                parameters={"cadence": cadence, "num_pieces": pieces},
                tags=["content", "scheduled"],
            )
        )
    return deployments


if __name__ == "__main__":  # pragma: no cover
    serve(*build_deployments(), query_seconds=query_seconds())
