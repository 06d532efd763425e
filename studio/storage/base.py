"""The seam content stores implement, and the object keys they use.

Keys are derived from ids only, never from user text, so a re-upload of the same piece
lands on the same key and can be skipped by checksum. The file name is an HMAC of the
piece id under a secret (`key_secret`): piece ids are uuid5 of the batch id, so a key
made of them let anyone holding one public capa1 link name every other piece of its
batch. With the HMAC, one key says nothing about any other.
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol

from studio.types import StoredObject, Tier

if TYPE_CHECKING:
    from studio.storage.settings import StorageSettings

#: bytes of HMAC-SHA256 kept in a file name (128 bits: not guessable, not too long)
_NAME_BYTES = 16
_KEY_CONTEXT = b"studio object keys v1"


def key_secret(storage: StorageSettings) -> bytes:
    """STORAGE_KEY_SECRET, else a key derived from R2_SECRET_ACCESS_KEY, else a fixed one.

    The fixed one serves the local store alone, whose files no URL serves; any remote
    store has a secret access key, so its names are always keyed.
    """
    if storage.storage_key_secret and storage.storage_key_secret.get_secret_value():
        return storage.storage_key_secret.get_secret_value().encode()
    if storage.r2_secret_access_key and storage.r2_secret_access_key.get_secret_value():
        material = storage.r2_secret_access_key.get_secret_value().encode()
        return hmac.new(material, _KEY_CONTEXT, hashlib.sha256).digest()
    return _KEY_CONTEXT


@lru_cache(maxsize=1)
def _environment_secret() -> bytes:
    """The secret of the process's own settings (callers that pass none: seeding, tools)."""
    from studio.storage.settings import StorageSettings

    return key_secret(StorageSettings())


def object_key(
    avatar_id: str,
    batch_id: str,
    piece_id: str,
    extension: str = "png",
    *,
    secret: bytes | None = None,
) -> str:
    """`avatars/<avatar>/batches/<batch>/<hmac(piece)>.<ext>`: stable, and unguessable."""
    material = secret if secret is not None else _environment_secret()
    name = hmac.new(material, piece_id.encode(), hashlib.sha256).hexdigest()[: 2 * _NAME_BYTES]
    return f"avatars/{avatar_id}/batches/{batch_id}/{name}.{extension}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ContentStore(Protocol):
    name: str
    stand_in: bool

    def put(
        self, piece_id: str, key: str, data: bytes, content_type: str, tier: Tier
    ) -> StoredObject: ...

    def url_for(self, key: str, tier: Tier) -> str:
        """The object's lasting link: a public URL or a local file; "" when it has none
        (a private object: links to it are minted on demand, see studio/storage/links.py)."""
        ...
