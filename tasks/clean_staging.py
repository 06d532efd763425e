"""After step 7: a completed batch's staged images go (studio/staging_cleanup.py).

A cleanup that cannot finish (the store down) never fails the batch: it says so at
WARNING and the storage-sync flow's sweep removes the rest later.
"""

from __future__ import annotations

import logging

from prefect import task

from studio.staging_cleanup import CleanupReport, clean_batch_staging, sweep_staging

log = logging.getLogger("studio.staging")


@task(name="clean-staging", retries=0, timeout_seconds=120)
def clean_staging(batch_id: str) -> CleanupReport:
    """Delete the completed batch's staged objects and local staged files."""
    try:
        report = clean_batch_staging(batch_id)
    except Exception as exc:  # a cleanup is never worth a failed batch
        report = CleanupReport(errors=[f"batch {batch_id}: {type(exc).__name__}"])
    for error in report.errors:
        log.warning("Staging not cleaned | %s | the storage-sync sweep retries it", error)
    return report


@task(name="sweep-staging", retries=0, timeout_seconds=600)
def sweep_old_staging() -> CleanupReport:
    """Staging of completed batches, and staging idle past STAGING_RETENTION_DAYS."""
    try:
        report = sweep_staging()
    except Exception as exc:  # e.g. the database is down: the next run sweeps
        report = CleanupReport(errors=[f"sweep not run: {type(exc).__name__}"])
    for error in report.errors:
        log.warning("Staging sweep | %s", error)
    return report
