"""Shared builders for storage tests: an R2 store pointed at the loopback SeaweedFS."""

from __future__ import annotations

import pytest

from studio.storage.r2 import R2ContentStore
from studio.storage.settings import StorageSettings
from tests.infra.seaweedfs import S3Server


def r2_settings(server: S3Server, bucket: str, **overrides: object) -> StorageSettings:
    """Settings that point the R2 store at the test server (R2_ENDPOINT_URL override)."""
    values: dict[str, object] = {
        "r2_endpoint_url": server.endpoint_url,
        "r2_access_key_id": server.access_key,
        "r2_secret_access_key": server.secret_key,
        "r2_bucket_name": bucket,
        "r2_public_url": server.public_url(bucket),
        "r2_max_attempts": 1,
        "r2_connect_timeout_seconds": 1.0,
        "r2_read_timeout_seconds": 10.0,
    }
    values.update(overrides)
    return StorageSettings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture
def r2_store(s3_server: S3Server, s3_bucket: str) -> R2ContentStore:
    return R2ContentStore(r2_settings(s3_server, s3_bucket))
