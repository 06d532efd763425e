"""Cloudflare R2 (or any S3-compatible store) through boto3.

Why these client settings: a current boto3 adds CRC checksums to every upload and, for
streamed bodies, sends them as ``aws-chunked`` trailers, which R2 rejects. Checksums are
therefore computed only when an operation requires them, and bodies are sent as plain
bytes with a Content-Length. The SHA-256 of each file is kept as object metadata instead,
which also makes a re-upload of the same key a no-op (HEAD first, compare, skip).
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from studio.storage.base import sha256_hex
from studio.storage.errors import StorageError, StorageRejected, StorageUnavailable
from studio.storage.settings import MAX_PRESIGNED_TTL_SECONDS, StorageSettings
from studio.types import StoredObject, Tier

logger = logging.getLogger(__name__)

CHECKSUM_METADATA_KEY = "sha256"
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}


#: boto3 sessions may not build clients from two threads at once
_session_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _session() -> boto3.session.Session:
    """One boto3 session per process for every S3 client it builds.

    Why: a client built from a fresh session loads and parses botocore's S3 model and
    endpoint data again (~0.1 s of CPU each); from a session that already did, ~6 ms.
    A run builds several (staging, the content store, links), and issue 20 measured
    13 % of a deployment run's CPU in them. Each client keeps its own event hooks and
    settings; only the loaded data is shared.
    """
    return boto3.session.Session()


def load_s3_model() -> None:
    """Load botocore's S3 model and endpoint data into this process's session, with no
    store configured and no request sent.

    Why: a warm process (engine/warm_server.py) does this once before it forks runs, so
    a run's first client (its staging, as its image step starts) costs ~6 ms instead of
    ~0.12 s of CPU, 0.3-0.6 s on a loaded 2-core worker, before its first image."""
    with _session_lock:
        _session().client(
            "s3",
            endpoint_url="http://127.0.0.1:9",
            aws_access_key_id="model-only",
            aws_secret_access_key="model-only",  # no request is ever sent
            region_name="auto",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )


def build_s3_client(settings: StorageSettings) -> Any:
    """A boto3 S3 client configured the way R2 needs it (see module docstring), from
    this process's one session."""
    if not settings.r2_configured:
        raise StorageRejected("R2 is not configured (R2_ACCOUNT_ID/R2_ENDPOINT_URL and keys)")
    assert settings.r2_secret_access_key is not None
    config = Config(
        signature_version="s3v4",
        region_name="auto",
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"mode": "standard", "total_max_attempts": settings.r2_max_attempts},
        connect_timeout=settings.r2_connect_timeout_seconds,
        read_timeout=settings.r2_read_timeout_seconds,
    )
    with _session_lock:
        return _session().client(
            "s3",
            endpoint_url=settings.endpoint_url,
            aws_access_key_id=settings.r2_access_key_id,
            aws_secret_access_key=settings.r2_secret_access_key.get_secret_value(),
            region_name="auto",
            config=config,
        )


def _translate(error: Exception, action: str) -> StorageError:
    """Map a botocore failure to our errors, keeping only safe words (code, status)."""
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", "unknown"))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if status >= 500 or code in {"SlowDown", "ServiceUnavailable", "InternalError"}:
            return StorageUnavailable(f"{action} failed: {code} (HTTP {status})")
        return StorageRejected(f"{action} refused: {code} (HTTP {status})")
    return StorageUnavailable(f"{action} failed: {type(error).__name__}")


class R2ContentStore:
    """The `ContentStore` on R2: capa1 in the content bucket (its public URL serves it),
    capa2/capa3 in the private bucket, reached only by links minted on demand.

    Why two buckets: R2's public domain serves every key of its bucket, so a premium
    object beside capa1 is one guessed (or leaked) key away from anyone.
    """

    name = "r2"
    stand_in = False

    def __init__(self, settings: StorageSettings, client: Any | None = None) -> None:
        self._settings = settings
        self._bucket = settings.r2_bucket_name
        self._client = client if client is not None else build_s3_client(settings)

    @property
    def client(self) -> Any:
        """The underlying boto3 client (for event hooks in tests and diagnostics)."""
        return self._client

    def bucket_for(self, tier: Tier) -> str:
        """capa1: the content bucket; capa2/capa3: the private one (never a public bucket)."""
        if tier == "capa1":
            return self._bucket
        bucket = self._settings.private_bucket
        problem = self._settings.misconfiguration()
        if bucket is None or problem:
            raise StorageRejected(problem or "no private bucket for premium content")
        return bucket

    def stored_checksum(self, key: str, tier: Tier = "capa1") -> str | None:
        """The SHA-256 recorded on the object, or None when the key does not exist."""
        try:
            head = self._client.head_object(Bucket=self.bucket_for(tier), Key=key)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND_CODES:
                return None
            raise _translate(error, "R2 HEAD") from None
        except BotoCoreError as error:
            raise _translate(error, "R2 HEAD") from None
        metadata = head.get("Metadata") or {}
        return metadata.get(CHECKSUM_METADATA_KEY, "")

    def put(
        self, piece_id: str, key: str, data: bytes, content_type: str, tier: Tier
    ) -> StoredObject:
        """Upload unless the same bytes are already under this key; return where it is."""
        checksum = sha256_hex(data)
        bucket = self.bucket_for(tier)
        if self.stored_checksum(key, tier) == checksum:
            logger.info("R2 already holds %s with the same checksum; upload skipped", key)
        else:
            try:
                self._client.put_object(
                    Bucket=bucket,
                    Key=key,
                    Body=data,
                    ContentLength=len(data),
                    ContentType=content_type,
                    Metadata={CHECKSUM_METADATA_KEY: checksum, "piece-id": piece_id},
                )
            except (ClientError, BotoCoreError) as error:
                raise _translate(error, "R2 upload") from None
        return StoredObject(
            piece_id=piece_id,
            key=key,
            url=self.url_for(key, tier),
            backend=self.name,
            size=len(data),
            checksum=checksum,
            content_type=content_type,
        )

    def url_for(self, key: str, tier: Tier) -> str:
        """The lasting link: capa1's public URL; "" for anything else (no link is kept:
        `presigned_url` mints a short-lived one when someone asks)."""
        if tier == "capa1" and self._settings.r2_public_url:
            return f"{self._settings.r2_public_url.rstrip('/')}/{key}"
        return ""

    def presigned_url(self, key: str, tier: Tier, ttl_seconds: int | None = None) -> str:
        """A GET link to the object that expires after `ttl_seconds`
        (default PRESIGNED_URL_TTL_SECONDS, capped at 7 days)."""
        ttl = ttl_seconds or self._settings.presigned_url_ttl_seconds
        try:
            return str(
                self._client.generate_presigned_url(
                    "get_object",
                    Params={"Bucket": self.bucket_for(tier), "Key": key},
                    ExpiresIn=min(ttl, MAX_PRESIGNED_TTL_SECONDS),
                )
            )
        except (ClientError, BotoCoreError) as error:
            raise _translate(error, "R2 presign") from None
