"""Remote store first, local folder when it fails: a piece is never lost to an outage.

Why a wrapper rather than a retry loop in the upload task: the upload step must finish
within its budget even when R2 is down for an hour. The remote store has already retried
(botocore standard retries); after that the file goes to local disk, marked
``needs_sync``, and the `storage-sync` flow moves it up when R2 is back.
"""

from __future__ import annotations

import logging

from studio.storage.base import ContentStore
from studio.storage.errors import StorageError, StorageUnavailable
from studio.storage.local import LocalContentStore
from studio.types import StoredObject, Tier

logger = logging.getLogger(__name__)


class FallbackContentStore:
    """`ContentStore` that keeps a file locally (marked for sync) when the primary fails."""

    stand_in = False

    def __init__(self, primary: ContentStore, local: LocalContentStore) -> None:
        self.primary = primary
        self.local = local
        self.name = primary.name
        #: the primary did not answer: the rest of this upload (one task run) goes local
        #: at once; each piece waiting out its own retries and timeouts (seconds each)
        #: overran the upload task's 60 s timeout at a few hundred pieces, crashing the batch
        self.unavailable = False

    def put(
        self, piece_id: str, key: str, data: bytes, content_type: str, tier: Tier
    ) -> StoredObject:
        if not self.unavailable:
            try:
                return self.primary.put(piece_id, key, data, content_type, tier)
            except StorageError as error:
                self.unavailable = isinstance(error, StorageUnavailable)
                logger.error(
                    "Storage upload failed | Piece: %s | %s | kept locally, marked for sync%s",
                    piece_id,
                    error,
                    "; the rest of this upload too" if self.unavailable else "",
                )
        stored = self.local.put(piece_id, key, data, content_type, tier)
        return stored.model_copy(update={"needs_sync": True})

    def url_for(self, key: str, tier: Tier) -> str:
        return self.primary.url_for(key, tier)
