"""The pipeline's core settings, read from the spec's environment variables.

Provider, hook, moderation and storage settings live beside the code that uses them
(`studio/*/settings.py`) so that each domain changes alone; this module holds what
the pipeline as a whole needs: where its database, files and logs are, and the
spec's processing switches.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    studio_home: Path = Field(default=Path(".studio"), alias="STUDIO_HOME")
    database_url: str = Field(default="", alias="DATABASE_URL")
    db_pool_size: int = Field(default=5, alias="DB_POOL_SIZE", ge=1)
    db_max_overflow: int = Field(default=10, alias="DB_MAX_OVERFLOW", ge=0)
    db_pool_recycle: int = Field(default=3600, alias="DB_POOL_RECYCLE")
    db_pool_timeout: float = Field(default=30.0, alias="DB_POOL_TIMEOUT", gt=0)

    log_level: str = Field(default="INFO", alias="LOG_LEVEL")
    log_file: Path = Field(default=Path("logs/app.log"), alias="LOG_FILE")
    enable_structured_logging: bool = Field(default=True, alias="ENABLE_STRUCTURED_LOGGING")
    #: the console shows all INFO detail (provider attempts, task-run states), not only
    #: the spec's lines, warnings and the progress bars (`--verbose` sets it)
    verbose: bool = Field(default=False, alias="STUDIO_VERBOSE")

    batch_generation_timeout: int = Field(default=600, alias="BATCH_GENERATION_TIMEOUT", gt=0)
    hook_generation_enabled: bool = Field(default=True, alias="HOOK_GENERATION_ENABLED")
    safety_check_enabled: bool = Field(default=True, alias="SAFETY_CHECK_ENABLED")
    upload_to_storage_enabled: bool = Field(default=True, alias="UPLOAD_TO_STORAGE_ENABLED")

    image_chunk_size: int = Field(default=10, alias="IMAGE_CHUNK_SIZE", ge=1, le=10)
    #: image-chunk subflows open at once (their pieces' provider calls all start with the
    #: step, capped by the provider limits); a 500-piece batch with all 50 chunks open
    #: flooded a SQLite Prefect server into 503s
    image_chunks_in_flight: int = Field(default=5, alias="IMAGE_CHUNKS_IN_FLIGHT", ge=1)
    min_success_ratio: float = Field(default=0.8, alias="MIN_SUCCESS_RATIO", ge=0, le=1)

    #: publish pieces whose image is a cached asset; default: hold them for review
    publish_degraded: bool = Field(default=False, alias="PUBLISH_DEGRADED")
    #: automatic resumes of a crashed or timed-out batch before it is marked failed
    auto_resume_max_attempts: int = Field(default=3, alias="AUTO_RESUME_MAX_ATTEMPTS", ge=0)
    #: a batch may borrow templates of other niches where the avatar's own niche has none
    #: for a tier (or none with a fresh prompt left); default: never leave the niche
    templates_allow_other_niches: bool = Field(
        default=False, alias="TEMPLATES_ALLOW_OTHER_NICHES"
    )
    # the R2 buckets (content, private: R2_PRIVATE_BUCKET_NAME / R2_STAGING_BUCKET) are
    # studio/storage/settings.py's, with the rest of the store's configuration

    @property
    def resolved_database_url(self) -> str:
        """The default is a SQLite file under STUDIO_HOME, so a fresh clone needs no server."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.studio_home / 'studio.db'}"

    @property
    def work_dir(self) -> Path:
        """Staging area for generated images, keyed by batch and piece id."""
        return self.studio_home / "work"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reload_settings() -> Settings:
    """Forget cached settings; tests and the CLI call this after changing the environment."""
    get_settings.cache_clear()
    return get_settings()
