"""The `storage-sync` flow: pieces kept locally while R2 was down go up to R2.

Scheduled (see prefect.yaml) and runnable on demand; one run at a time is enough, and
two at once are still safe (rows are locked per page, uploads are no-ops by checksum).
"""

from __future__ import annotations

from prefect import flow

from tasks.upload import sync_local_uploads


@flow(name="storage-sync", log_prints=False, retries=0)
def storage_sync(page_size: int = 100, max_pieces: int | None = None) -> dict[str, object]:
    """Upload every piece marked `needs_sync` and clear its mark; returns the counts."""
    report = sync_local_uploads(page_size=page_size, max_pieces=max_pieces)
    return {
        "synced": report.synced,
        "failed": report.failed,
        "missing": report.missing,
        "remaining": report.remaining,
        "errors": report.errors[:20],
    }
