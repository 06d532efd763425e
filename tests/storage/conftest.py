"""Shared builders for storage tests: an R2 store pointed at the loopback SeaweedFS,
shaped like production: a public content bucket (capa1) and a private one."""

from __future__ import annotations

import pytest

from studio.storage.r2 import R2ContentStore
from studio.storage.settings import StorageSettings
from tests.infra.seaweedfs import S3Server


def r2_settings(
    server: S3Server, bucket: str, private: str | None = None, **overrides: object
) -> StorageSettings:
    """Settings that point the R2 store at the test server (R2_ENDPOINT_URL override).

    `bucket` is the content bucket; when it is public its URL is R2_PUBLIC_URL.
    `private` is R2_PRIVATE_BUCKET_NAME (premium pieces and staging)."""
    public = bucket.startswith("pub-")
    values: dict[str, object] = {
        "r2_endpoint_url": server.endpoint_url,
        "r2_access_key_id": server.access_key,
        "r2_secret_access_key": server.secret_key,
        "r2_bucket_name": bucket,
        "r2_public_url": server.public_url(bucket) if public else None,
        "r2_private_bucket_name": private,
        "r2_max_attempts": 1,
        "r2_connect_timeout_seconds": 1.0,
        "r2_read_timeout_seconds": 10.0,
    }
    values.update(overrides)
    return StorageSettings(_env_file=None, **values)  # type: ignore[arg-type]


def r2_env(server: S3Server, public: str, private: str) -> dict[str, str]:
    """The environment of a store shaped like production R2 (for batches and the CLI)."""
    return {
        "R2_ENDPOINT_URL": server.endpoint_url,
        "R2_ACCESS_KEY_ID": server.access_key,
        "R2_SECRET_ACCESS_KEY": server.secret_key,
        "R2_BUCKET_NAME": public,
        "R2_PUBLIC_URL": server.public_url(public),
        "R2_PRIVATE_BUCKET_NAME": private,
        "R2_MAX_ATTEMPTS": "1",
        "R2_CONNECT_TIMEOUT_SECONDS": "1",
    }


@pytest.fixture
def r2_store(s3_server: S3Server, s3_bucket: str, s3_private_bucket: str) -> R2ContentStore:
    return R2ContentStore(r2_settings(s3_server, s3_bucket, s3_private_bucket))
