"""Step 5: store the approved pieces' files; keys come from ids, never from user text.

With R2 configured, a file R2 still refuses after its retries goes to the local store
marked `needs_sync` (see studio/storage/fallback.py); the `storage-sync` flow moves it
up later, so an outage costs a delay, never a piece.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from prefect import task
from pydantic import BaseModel

from studio.settings import get_settings
from studio.storage.base import object_key
from studio.storage.registry import build_content_store
from studio.types import StoredObject, Tier

UPLOAD_CONCURRENCY = 8


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
    tags=["storage-upload"],
)
async def upload_pieces(
    items: list[UploadItem], upload_to_storage: bool = True
) -> dict[str, StoredObject]:
    """`upload_to_storage=False` keeps the files in the local store (the batch's flag)."""
    store = build_content_store(get_settings(), upload=upload_to_storage)
    gate = asyncio.Semaphore(UPLOAD_CONCURRENCY)

    async def one(item: UploadItem) -> StoredObject:
        async with gate:
            data = await asyncio.to_thread(Path(item.path).read_bytes)
            extension = Path(item.path).suffix.lstrip(".") or "png"
            key = object_key(item.avatar_id, item.batch_id, item.piece_id, extension)
            return await asyncio.to_thread(
                store.put, item.piece_id, key, data, item.content_type, item.tier
            )

    stored = await asyncio.gather(*(one(item) for item in items))
    return {obj.piece_id: obj for obj in stored}
