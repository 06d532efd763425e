"""Generated images staged by batch and piece id: on local disk, and in the object store.

An image is paid for once: before a provider is called, the image task looks here,
so a retried task, a retried flow run or a resumed batch reuses what was made.
The metadata is written after the image, atomically (a local rename; an S3 PUT is
all-or-nothing), so a crash mid-write leaves no half-staged piece behind.

Why the object store: with only a local disk, a batch resumed on another host finds
nothing and buys every image again. When an S3/R2 store is configured, each image is
also put under the private prefix `staging/<batch>/<piece>` of a bucket that no public
domain serves (R2_PRIVATE_BUCKET_NAME, or the content bucket when it has no public URL),
so any host can resume any batch; the local copy is then only this host's cache. A
staged image is never publicly readable: only stored (passed) pieces get public keys
(`avatars/...`, studio/storage/base.py), so a rejected piece is never behind the
public URL.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from studio.staging_outage import StoreOutage, outage_for
from studio.types import GeneratedImage

log = logging.getLogger("studio.staging")

STAGING_PREFIX = "staging"


class RemoteStaging:
    """The private staging area in an S3-compatible bucket (one client per process)."""

    def __init__(self, client: Any, bucket: str, prefix: str = STAGING_PREFIX) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def key(self, batch_id: str, name: str) -> str:
        return f"{self.prefix}/{batch_id}/{name}"

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=data,
            ContentLength=len(data),
            ContentType=content_type,
        )

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code", "")) in {"404", "NoSuchKey"}:
                return None
            raise

    def presigned_get(self, key: str, seconds: int = 300) -> str:
        """A short-lived GET link to a staged image (e.g. for a moderation API to fetch)."""
        return str(
            self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=seconds
            )
        )


class ImageStaging:
    def __init__(self, root: Path, batch_id: str, remote: RemoteStaging | None = None) -> None:
        self.batch_id = batch_id
        self.dir = Path(root) / batch_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.remote = remote

    def _meta(self, piece_id: str) -> Path:
        return self.dir / f"{piece_id}.json"

    def image_path(self, piece_id: str, content_type: str = "image/png") -> Path:
        extension = {"image/jpeg": "jpg", "image/webp": "webp"}.get(content_type, "png")
        return self.dir / f"{piece_id}.{extension}"

    def existing(self, piece_id: str) -> GeneratedImage | None:
        """The staged image: this host's copy, else the object store's (copied here).

        The object store failing to answer is no reason to fail the piece: it is read
        as "not staged there", so only an image this host does not have is made again.
        """
        meta = self._meta(piece_id)
        if meta.exists():
            image = GeneratedImage.model_validate_json(meta.read_text())
            if Path(image.path).exists():
                return image
        return self._from_remote(piece_id)

    def _from_remote(self, piece_id: str) -> GeneratedImage | None:
        if self.remote is None:
            return None
        outage = self._outage()
        if not outage.allows():
            outage.skipped(self.batch_id)
            return None
        try:
            raw = self.remote.get(self.remote.key(self.batch_id, f"{piece_id}.json"))
            image = GeneratedImage.model_validate_json(raw) if raw is not None else None
            data = self.remote.get(image.staged_key or "") if image is not None else None
        except Exception as error:  # botocore's errors, any of them: the store failed
            outage.failed(self.batch_id, "read", error)
            return None
        outage.succeeded()
        if image is None or data is None:
            return None
        path = self.image_path(piece_id, image.content_type)
        _atomic_write(path, data)
        local = image.model_copy(update={"path": str(path)})
        _atomic_write(self._meta(piece_id), local.model_dump_json().encode())
        log.info("Staged image restored from the object store | Piece: %s", piece_id)
        return local

    def save(self, image: GeneratedImage, data: bytes) -> GeneratedImage:
        """Stage a paid-for image: on this host's disk first, then in the object store.

        The local copy and its metadata are written before the store is tried, so a store
        that fails or hangs (or a process killed meanwhile) leaves the image reusable
        here; a store failure only leaves `staged_key` unset (see staging_outage.py).
        """
        path = self.image_path(image.piece_id, image.content_type)
        _atomic_write(path, data)
        staged = image.model_copy(update={"path": str(path)})
        _atomic_write(self._meta(image.piece_id), staged.model_dump_json().encode())
        if self.remote is None:
            return staged
        remote = self._to_remote(staged, path.name, data)
        if remote is not None:
            staged = remote
            _atomic_write(self._meta(image.piece_id), staged.model_dump_json().encode())
        return staged

    def _to_remote(self, staged: GeneratedImage, name: str, data: bytes) -> GeneratedImage | None:
        """The image, then its metadata (the meta means "whole"), in the store; None when
        the store failed or is being skipped after a failure."""
        assert self.remote is not None
        outage = self._outage()
        if not outage.allows():
            outage.skipped(self.batch_id)
            return None
        key = self.remote.key(self.batch_id, name)
        with_key = staged.model_copy(update={"staged_key": key})
        meta_key = self.remote.key(self.batch_id, f"{staged.piece_id}.json")
        try:
            self.remote.put(key, data, staged.content_type)
            self.remote.put(meta_key, with_key.model_dump_json().encode(), "application/json")
        except Exception as error:  # botocore's errors, any of them: the store failed
            outage.failed(self.batch_id, "write", error)
            return None
        outage.succeeded()
        return with_key

    def _outage(self) -> StoreOutage:
        assert self.remote is not None
        endpoint = str(getattr(getattr(self.remote.client, "meta", None), "endpoint_url", ""))
        return outage_for(endpoint, self.remote.bucket)


def open_staging(root: Path | str, batch_id: str) -> ImageStaging:
    """The staging of one batch, in the object store too when one is configured."""
    return ImageStaging(Path(root), batch_id, remote_staging())


def remote_staging() -> RemoteStaging | None:
    """The private bucket's staging area, or None (local store: local disk only).

    Staged images (rejected ones included) go to the private bucket
    (R2_PRIVATE_BUCKET_NAME, alias R2_STAGING_BUCKET), or to the content bucket when no
    public URL serves it. With a public URL and no private bucket a batch is refused at
    validation; called anyway, this stages on local disk only and says so.
    """
    from studio.storage.settings import StorageSettings

    storage = StorageSettings()
    if not storage.r2_configured:
        return None
    bucket = storage.private_bucket
    if bucket is None or storage.misconfiguration():
        log.warning(
            "Images staged on local disk only: the content bucket is public "
            "(R2_PUBLIC_URL); set R2_PRIVATE_BUCKET_NAME (or R2_STAGING_BUCKET) to a private "
            "bucket so another host can resume a batch without paying for its images again"
        )
        return None
    return _remote(storage.endpoint_url or "", storage.r2_access_key_id or "", bucket)


@lru_cache(maxsize=4)
def _remote(endpoint: str, access_key_id: str, bucket: str) -> RemoteStaging:
    """One client per store and bucket per process (a boto3 client costs ~50 ms)."""
    from studio.storage.r2 import build_s3_client
    from studio.storage.settings import StorageSettings

    return RemoteStaging(build_s3_client(StorageSettings()), bucket)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
