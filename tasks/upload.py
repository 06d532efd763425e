"""Step 5: store the approved pieces' files; keys come from ids, never from user text,
and are keyed by a secret so that no key can be derived from another (studio/storage/base.py).

With R2 configured, a file R2 still refuses after its retries goes to the local store
marked `needs_sync` (see studio/storage/fallback.py); the `storage-sync` flow moves it
up later, so an outage costs a delay, never a piece.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from prefect import task
from pydantic import BaseModel

from studio.db.engine import session_scope
from studio.settings import get_settings
from studio.storage.base import key_secret, object_key
from studio.storage.registry import (
    build_content_store,
    build_local_store,
    build_remote_store,
    storage_settings,
)
from studio.storage.sync import SyncReport, count_pending, sync_pending
from studio.types import StoredObject, Tier

UPLOAD_CONCURRENCY = 8
logger = logging.getLogger("studio.storage")


class UploadItem(BaseModel):
    piece_id: str
    avatar_id: str
    batch_id: str
    tier: Tier
    path: str
    content_type: str


@task(
    name="upload",
    retries=3,
    retry_delay_seconds=[1, 4, 10],
    timeout_seconds=60,
)
async def upload_pieces(
    items: list[UploadItem], upload_to_storage: bool = True
) -> dict[str, StoredObject]:
    """`upload_to_storage=False` keeps the files in the local store (the batch's flag)."""
    settings = get_settings()
    store = build_content_store(settings, upload=upload_to_storage)
    secret = key_secret(storage_settings(settings))
    gate = asyncio.Semaphore(UPLOAD_CONCURRENCY)

    async def one(item: UploadItem) -> StoredObject:
        async with gate:
            data = await asyncio.to_thread(Path(item.path).read_bytes)
            extension = Path(item.path).suffix.lstrip(".") or "png"
            key = object_key(
                item.avatar_id, item.batch_id, item.piece_id, extension, secret=secret
            )
            return await asyncio.to_thread(
                store.put, item.piece_id, key, data, item.content_type, item.tier
            )

    stored = await asyncio.gather(*(one(item) for item in items))
    return {obj.piece_id: obj for obj in stored}


@task(
    name="sync-local-uploads",
    retries=0,
    timeout_seconds=1800,
    tags=["provider:r2"],
)
def sync_local_uploads(page_size: int = 100, max_pieces: int | None = None) -> SyncReport:
    """Move pieces kept locally during an outage up to R2 (see studio/storage/sync.py)."""
    settings = get_settings()
    remote = build_remote_store(settings)
    if remote is None:
        logger.warning("Storage sync skipped | R2 is not configured")
        with session_scope() as session:
            return SyncReport(remaining=count_pending(session))
    return sync_pending(session_scope, build_local_store(settings), remote, page_size, max_pieces)
