"""Storage settings, read from the spec's environment variables (R2_*, UPLOAD_TO_STORAGE_ENABLED).

Why a class of its own: the storage backend changes for its own reasons (a new bucket,
a rotated key, a different S3-compatible vendor); the aggregated `Settings` embeds it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: S3 signature v4 presigned URLs cannot live longer than seven days.
MAX_PRESIGNED_TTL_SECONDS = 7 * 24 * 3600
#: premium links minted on demand live this long unless PRESIGNED_URL_TTL_SECONDS says otherwise
DEFAULT_PRESIGNED_TTL_SECONDS = 3600


class StorageSettings(BaseSettings):
    """Where finished pieces go, and how hard to try before falling back to local disk."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    r2_account_id: str | None = None
    r2_access_key_id: str | None = None
    r2_secret_access_key: SecretStr | None = None
    r2_bucket_name: str = Field(
        default="vixenbliss-content",
        description="The content bucket: capa1 only when it has a public URL.",
    )
    r2_public_url: str | None = Field(
        default=None, description="Base URL of the bucket's public domain (capa1 links)."
    )
    #: capa2/capa3, staged and rejected images: a bucket no public URL serves.
    #: R2_STAGING_BUCKET (the earlier name of the staging bucket) is accepted as an alias.
    r2_private_bucket_name: str | None = Field(
        default=None,
        validation_alias=AliasChoices("R2_PRIVATE_BUCKET_NAME", "R2_STAGING_BUCKET"),
        description="Private bucket for premium pieces and staging (needed with R2_PUBLIC_URL).",
    )
    r2_endpoint_url: str | None = Field(
        default=None,
        description="Override of https://<account>.r2.cloudflarestorage.com for any S3 store.",
    )
    upload_to_storage_enabled: bool = True
    presigned_url_ttl_seconds: int = Field(
        default=DEFAULT_PRESIGNED_TTL_SECONDS,
        gt=0,
        validation_alias=AliasChoices("PRESIGNED_URL_TTL_SECONDS", "R2_PRESIGNED_TTL_SECONDS"),
        description="Lifetime of links minted on demand; capped at 7 days (the S3 v4 maximum).",
    )
    #: keys object names so that none can be derived from a piece id or another key;
    #: unset: derived from R2_SECRET_ACCESS_KEY (set it to keep names across a key rotation)
    storage_key_secret: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("STORAGE_KEY_SECRET")
    )
    #: staging of batches that ended without completing is kept this long for a resume
    staging_retention_days: float = Field(
        default=7.0, gt=0, validation_alias=AliasChoices("STAGING_RETENTION_DAYS")
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

    @field_validator("presigned_url_ttl_seconds")
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
    def private_bucket(self) -> str | None:
        """Where premium and staged objects go: the private bucket, or, with no public
        URL, the content bucket itself (no public URL reaches it); None when a public URL
        is set and no private bucket is (refused: see `misconfiguration`)."""
        if self.r2_private_bucket_name:
            return self.r2_private_bucket_name
        return None if self.r2_public_url else self.r2_bucket_name

    def misconfiguration(self) -> str | None:
        """Why this store would expose premium content, in one line naming the variables."""
        if not self.r2_configured:
            return None
        if self.r2_public_url and self.r2_private_bucket_name == self.r2_bucket_name:
            return (
                "R2_PRIVATE_BUCKET_NAME names the content bucket, which R2_PUBLIC_URL serves; "
                "set it to a bucket no public URL serves"
            )
        if self.private_bucket is not None:
            return None
        return (
            "R2_PUBLIC_URL is set but R2_PRIVATE_BUCKET_NAME is not: capa2/capa3, staged and "
            "rejected images would sit behind the public URL; set R2_PRIVATE_BUCKET_NAME "
            "(or R2_STAGING_BUCKET) to a bucket no public URL serves"
        )

    @property
    def use_r2(self) -> bool:
        """Upload to R2 only when enabled and configured; otherwise keep files locally."""
        return self.upload_to_storage_enabled and self.r2_configured
