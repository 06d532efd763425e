"""Why a store refused a file, in words safe to log (never a key, secret or signature)."""

from __future__ import annotations


class StorageError(RuntimeError):
    """A content store could not keep a file; callers fall back to the local store."""


class StorageUnavailable(StorageError):
    """The store did not answer or answered 5xx after all retries (network, outage)."""


class StorageRejected(StorageError):
    """The store answered but refused (credentials, bucket permissions, missing bucket)."""
