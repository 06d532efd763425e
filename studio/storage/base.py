"""The seam content stores implement.

Keys are derived from ids only (see `object_key`), never from user text, so a
re-upload of the same piece lands on the same key and can be skipped by checksum.
"""

from __future__ import annotations

import hashlib
from typing import Protocol

from studio.types import StoredObject, Tier


def object_key(avatar_id: str, batch_id: str, piece_id: str, extension: str = "png") -> str:
    return f"avatars/{avatar_id}/batches/{batch_id}/{piece_id}.{extension}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ContentStore(Protocol):
    name: str
    stand_in: bool

    def put(
        self, piece_id: str, key: str, data: bytes, content_type: str, tier: Tier
    ) -> StoredObject: ...

    def url_for(self, key: str, tier: Tier) -> str: ...
