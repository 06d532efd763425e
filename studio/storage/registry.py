"""Which content store a batch uses.

R2 (or any S3-compatible store) when configured and enabled, with the local folder as
the fallback; the local folder alone otherwise (the embedded default, a stand-in).
The R2 store (and with it boto3, ~0.1 s to import) is imported only when it is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from studio.settings import Settings
from studio.storage.base import ContentStore
from studio.storage.fallback import FallbackContentStore
from studio.storage.local import LocalContentStore
from studio.storage.settings import StorageSettings

if TYPE_CHECKING:
    from studio.storage.r2 import R2ContentStore


def storage_settings(settings: Settings) -> StorageSettings:
    """The aggregated settings' storage part, or one read from the environment."""
    embedded = getattr(settings, "storage", None)
    return embedded if isinstance(embedded, StorageSettings) else StorageSettings()


def local_root(settings: Settings) -> Path:
    """LOCAL_STORAGE_DIR when set, else `<STUDIO_HOME>/content`."""
    configured = storage_settings(settings).local_storage_dir
    return Path(configured) if configured else settings.studio_home / "content"


def build_local_store(settings: Settings) -> LocalContentStore:
    return LocalContentStore(local_root(settings))


def build_remote_store(settings: Settings) -> R2ContentStore | None:
    """The R2 store when configured (regardless of the upload switch), else None."""
    storage = storage_settings(settings)
    if not storage.r2_configured:
        return None
    from studio.storage.r2 import R2ContentStore

    return R2ContentStore(storage)


def build_content_store(settings: Settings, upload: bool = True) -> ContentStore:
    """`upload=False` (the batch's upload_to_storage flag) keeps files in the local store."""
    storage = storage_settings(settings)
    enabled = upload and storage.upload_to_storage_enabled and settings.upload_to_storage_enabled
    local = build_local_store(settings)
    if enabled and storage.r2_configured:
        from studio.storage.r2 import R2ContentStore

        return FallbackContentStore(R2ContentStore(storage), local)
    return local


def validate_storage_settings(settings: Settings | None = None) -> None:
    """Refuse a batch before anything is spent when premium content would be public
    (R2_PUBLIC_URL without a private bucket): BatchRequestError naming the variables."""
    from studio.request import BatchRequestError

    storage = StorageSettings() if settings is None else storage_settings(settings)
    problem = storage.misconfiguration()
    if problem:
        raise BatchRequestError("R2_PRIVATE_BUCKET_NAME", problem)


def storage_status(settings: Settings, *, count_pending: bool = True) -> dict[str, object]:
    """The health check's view: which backend, configured or not; never a secret.

    `status` is "misconfigured" (with the reason in `error`) when a public URL is set
    and no private bucket is: batches are refused until it is fixed."""
    storage = storage_settings(settings)
    problem = storage.misconfiguration()
    status: dict[str, object] = {
        "status": "misconfigured" if problem else "ok",
        "configured": storage.r2_configured,
        "upload_enabled": storage.upload_to_storage_enabled and settings.upload_to_storage_enabled,
        "backend": "r2" if storage.use_r2 else "local",
        "stand_in": not storage.use_r2,
        "bucket": storage.r2_bucket_name if storage.r2_configured else None,
        "public_url": bool(storage.r2_public_url),
        "private_bucket": storage.private_bucket if storage.r2_configured else None,
        "root": str(local_root(settings).resolve()),
        "presigned_ttl_seconds": storage.presigned_url_ttl_seconds,
        # not counted on a database without the schema: reading would create its file
        "pending_sync": _pending_sync(settings) if count_pending else None,
    }
    if problem:
        status["error"] = problem
    return status


def _pending_sync(settings: Settings) -> int | None:
    """Pieces kept locally awaiting the storage-sync flow; None when the database is down."""
    from studio.db.engine import session_scope
    from studio.storage.sync import count_pending

    try:
        with session_scope(settings) as session:
            return count_pending(session)
    except Exception:  # the database check reports the outage itself
        return None
