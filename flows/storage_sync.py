"""The `storage-sync` flow: pieces kept locally while R2 was down go up to R2, and
staging no batch needs any more is swept (studio/staging_cleanup.py).

Scheduled (see prefect.yaml) and runnable on demand; one run at a time is enough, and
two at once are still safe (rows are locked per page, uploads are no-ops by checksum).
"""

from __future__ import annotations

from prefect import flow

from flows.schema_gate import schema_refusal
from tasks.clean_staging import sweep_old_staging
from tasks.upload import sync_local_uploads


@flow(name="storage-sync", log_prints=False, retries=0)
def storage_sync(
    page_size: int = 100, max_pieces: int | None = None, sweep_staging: bool = True
) -> dict[str, object]:
    """Upload every piece marked `needs_sync` and clear its mark, then sweep staging
    (completed batches', and any idle past STAGING_RETENTION_DAYS); returns the counts."""
    if refused := schema_refusal("Storage sync"):  # no studio schema: one line
        return refused  # type: ignore[return-value]
    report = sync_local_uploads(page_size=page_size, max_pieces=max_pieces)
    swept = sweep_old_staging() if sweep_staging else None
    return {
        "synced": report.synced,
        "failed": report.failed,
        "missing": report.missing,
        "remaining": report.remaining,
        "errors": report.errors[:20],
        "staging_swept": len(swept.batches) if swept else 0,
    }
