"""The local-folder content store: the embedded default and the fallback when R2 fails."""

from __future__ import annotations

import os
from pathlib import Path

from studio.storage.base import sha256_hex
from studio.types import StoredObject, Tier


class LocalContentStore:
    """Files under a root folder, at the same id-derived keys the remote store uses.

    Writes are atomic (temp file + rename) so a crash never leaves a half file that a
    later sync would upload; a re-put of identical bytes leaves the file untouched.
    """

    name = "local"
    stand_in = True

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def path_for(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"storage key escapes the store: {key!r}")
        return path

    def put(
        self, piece_id: str, key: str, data: bytes, content_type: str, tier: Tier
    ) -> StoredObject:
        path = self.path_for(key)
        checksum = sha256_hex(data)
        if not (path.exists() and sha256_hex(path.read_bytes()) == checksum):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return StoredObject(
            piece_id=piece_id,
            key=key,
            url=self.url_for(key, tier),
            backend=self.name,
            size=len(data),
            checksum=checksum,
            content_type=content_type,
        )

    def read(self, key: str) -> bytes:
        """The stored bytes (the sync flow reads what it moves up)."""
        return self.path_for(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path_for(key).exists()

    def url_for(self, key: str, tier: Tier) -> str:
        return self.path_for(key).as_uri()
