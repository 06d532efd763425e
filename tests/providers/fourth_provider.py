"""A fourth image provider as a contributor would write it: one module.

Used by test_catalogue.py, which adds its entry to a copy of the catalogue and checks
that the settings, chain, prices, limits and blocks all know it.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from studio.providers.base import BilledJob, ProviderImage
from studio.providers.entry import BlockField, CredentialsBlock, ProviderEntry, Tuning
from studio.types import AvatarRef, PieceSpec

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


class AcmeProvider:
    name = "acme"
    stand_in = False

    def __init__(self, endpoint: str, *, api_key: str, price_usd: float) -> None:
        self.endpoint, self.api_key, self.price_usd = endpoint, api_key, price_usd

    async def generate(
        self, spec: PieceSpec, avatar: AvatarRef, job: BilledJob | None = None
    ) -> ProviderImage:
        return ProviderImage(PNG, "image/png", self.price_usd)


class AcmeSettings(BaseSettings):
    acme_endpoint: str | None = Field(None, validation_alias="ACME_ENDPOINT")
    acme_api_key: SecretStr | None = Field(None, validation_alias="ACME_API_KEY")


def _build(settings: AcmeSettings, tuning: Tuning) -> AcmeProvider:
    assert settings.acme_endpoint and settings.acme_api_key
    return AcmeProvider(
        settings.acme_endpoint,
        api_key=settings.acme_api_key.get_secret_value(),
        price_usd=tuning.price_usd,
    )


ENTRY = ProviderEntry(
    name="acme",
    settings=AcmeSettings,
    tuning=Tuning(
        max_concurrent=4, max_attempts=2, backoff_factor=2.0, timeout=45.0, price_usd=0.002
    ),
    price_source="Acme's price page",
    configured=lambda settings: bool(settings.acme_endpoint and settings.acme_api_key),
    build=_build,
    secret_fields=("acme_api_key",),
    quality_rank=3,
    credentials_block=CredentialsBlock(
        type_name="Studio Acme Credentials",
        class_name="AcmeCredentials",
        description="Acme: the endpoint and the key sent to it (and only to it).",
        url=BlockField("endpoint", "ACME_ENDPOINT", "the endpoint's URL", required=True),
        keys=(BlockField("api_key", "ACME_API_KEY", "sent only to endpoint", secret=True,
                         required=True),),
    ),
)
