"""Storage settings, read from the spec's environment variables (R2_*, UPLOAD_TO_STORAGE_ENABLED).

Why a class of its own: the storage backend changes for its own reasons (a new bucket,
a rotated key, a different S3-compatible vendor); the aggregated `Settings` embeds it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: S3 signature v4 presigned URLs cannot live longer than seven days.
MAX_PRESIGNED_TTL_SECONDS = 7 * 24 * 3600


class StorageSettings(BaseSettings):
    """Where finished pieces go, and how hard to try before falling back to local disk."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    r2_account_id: str | None = None
    r2_access_key_id: str | None = None
    r2_secret_access_key: SecretStr | None = None
    r2_bucket_name: str = "vixenbliss-content"
    r2_public_url: str | None = Field(
        default=None, description="Base URL of the bucket's public domain (capa1 links)."
    )
    r2_endpoint_url: str | None = Field(
        default=None,
        description="Override of https://<account>.r2.cloudflarestorage.com for any S3 store.",
    )
    upload_to_storage_enabled: bool = True
    r2_presigned_ttl_seconds: int = Field(
        default=3 * 24 * 3600,
        gt=0,
        description="Lifetime of capa2/capa3 links; capped at 7 days (the S3 v4 maximum).",
    )
    r2_max_attempts: int = Field(
        default=3, ge=1, description="Attempts per S3 call (botocore standard retries)."
    )
    r2_connect_timeout_seconds: float = Field(default=5.0, gt=0)
    r2_read_timeout_seconds: float = Field(default=60.0, gt=0)
    local_storage_dir: Path | None = Field(
        default=None,
        description="Local store root; default <STUDIO_HOME>/content.",
    )

    @field_validator("r2_presigned_ttl_seconds")
    @classmethod
    def _cap_ttl(cls, value: int) -> int:
        """Clamp rather than fail: a too-long TTL is a preference, not an error."""
        return min(value, MAX_PRESIGNED_TTL_SECONDS)

    @property
    def endpoint_url(self) -> str | None:
        """The S3 endpoint: the explicit override, else R2's account endpoint."""
        if self.r2_endpoint_url:
            return self.r2_endpoint_url.rstrip("/")
        if self.r2_account_id:
            return f"https://{self.r2_account_id}.r2.cloudflarestorage.com"
        return None

    @property
    def r2_configured(self) -> bool:
        """True when an endpoint and both halves of the key pair are set."""
        return bool(
            self.endpoint_url
            and self.r2_access_key_id
            and self.r2_secret_access_key
            and self.r2_secret_access_key.get_secret_value()
        )

    @property
    def use_r2(self) -> bool:
        """Upload to R2 only when enabled and configured; otherwise keep files locally."""
        return self.upload_to_storage_enabled and self.r2_configured
