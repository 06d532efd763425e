"""Replicate FLUX LoRA's settings, catalogue entry and dead-run job lookup.

Why apart from its client (`replicate_flux.py`): the client imports the `replicate` SDK
(~0.2 s), and the catalogue imports every entry, so the entry lives where importing it
costs nothing; `_build` imports the client only when Replicate is configured.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import httpx
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from studio.ledger.dead_runs import JobAnswer, OpenRow
from studio.providers.comfyui import seed_for
from studio.providers.entry import (
    CANNOT_TELL,
    LOOKUP_TIMEOUT,
    CredentialsBlock,
    ProviderEntry,
    Tuning,
)

if TYPE_CHECKING:
    from studio.providers.replicate_flux import ReplicateFluxProvider

REPLICATE_DEFAULT_BASE_URL = "https://api.replicate.com"
#: clock skew allowed between our reservation and the prediction's `created_at`
SKEW = timedelta(minutes=5)
#: list pages read at most when searching a row without a job id
MAX_PAGES = 20


class ReplicateSettings(BaseSettings):
    """The Replicate API token, where it goes, and which model takes the LoRA."""

    replicate_api_token: SecretStr | None = Field(None, validation_alias="REPLICATE_API_TOKEN")
    replicate_base_url: str = Field(
        REPLICATE_DEFAULT_BASE_URL, validation_alias="REPLICATE_BASE_URL"
    )
    replicate_model: str = Field(
        "black-forest-labs/flux-dev-lora", validation_alias="REPLICATE_MODEL"
    )
    #: name of the model input that takes the LoRA weights URL
    replicate_lora_input: str = Field("lora_weights", validation_alias="REPLICATE_LORA_INPUT")
    replicate_poll_interval: float = Field(0.5, validation_alias="REPLICATE_POLL_INTERVAL")
    #: how many 429s on create are waited out (per attempt), honouring Retry-After
    replicate_throttle_retries: int = Field(5, validation_alias="REPLICATE_THROTTLE_RETRIES")


def _build(settings: ReplicateSettings, tuning: Tuning) -> ReplicateFluxProvider:
    from studio.providers.replicate_flux import ReplicateFluxProvider

    assert settings.replicate_api_token is not None
    return ReplicateFluxProvider(
        settings.replicate_api_token.get_secret_value(),
        base_url=settings.replicate_base_url,
        model=settings.replicate_model,
        lora_input=settings.replicate_lora_input,
        price_usd=tuning.price_usd,
        poll_interval=settings.replicate_poll_interval,
        throttle_retries=settings.replicate_throttle_retries,
        wait_seconds=int(min(60, tuning.timeout)),
    )


async def find_job(settings: ReplicateSettings, row: OpenRow) -> JobAnswer:
    """A dead run's prediction: `GET /v1/predictions/{id}` (404: no such job). A row
    without an id (the process died while `Prefer: wait` held the create's answer) is
    looked up in `GET /v1/predictions` (newest first, paged by `next`): the prediction
    of this piece's seed created since the reservation, not one the ledger already holds.
    """
    if settings.replicate_api_token is None:
        return CANNOT_TELL
    headers = {"Authorization": f"Bearer {settings.replicate_api_token.get_secret_value()}"}
    async with httpx.AsyncClient(
        base_url=settings.replicate_base_url, headers=headers, timeout=LOOKUP_TIMEOUT
    ) as client:
        if row.job_id:
            answer = await client.get(f"/v1/predictions/{row.job_id}")
            if answer.status_code == 404:
                return JobAnswer(False)
            answer.raise_for_status()
            return JobAnswer(True, row.job_id)
        if row.piece_id is None:
            return CANNOT_TELL
        return await _search(client, row)


async def _search(client: httpx.AsyncClient, row: OpenRow) -> JobAnswer:
    assert row.piece_id is not None
    seed = seed_for(row.piece_id) % 2**31
    since = row.created_at - SKEW
    url: str | None = "/v1/predictions"
    for _ in range(MAX_PAGES):
        if url is None:
            return JobAnswer(False)  # every prediction since the reservation was read
        page = await client.get(url)
        page.raise_for_status()
        body = page.json()
        for prediction in body.get("results") or []:
            created = _moment(prediction.get("created_at"))
            if created is not None and created < since:
                return JobAnswer(False)  # newest first: older ones are not this call's
            pid = prediction.get("id")
            if not pid or pid in row.known_job_ids:
                continue
            inputs = prediction.get("input")
            if inputs is None:  # the list may leave inputs out: read the prediction
                full = await client.get(f"/v1/predictions/{pid}")
                full.raise_for_status()
                inputs = full.json().get("input") or {}
            if inputs.get("seed") == seed:
                return JobAnswer(True, str(pid))
        url = body.get("next")
    return CANNOT_TELL  # too many predictions to read: counted, not guessed away


def _moment(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


ENTRY = ProviderEntry(
    name="replicate",
    settings=ReplicateSettings,
    tuning=Tuning(
        max_concurrent=5, max_attempts=2, backoff_factor=2.0, timeout=60.0, price_usd=0.03
    ),
    price_source='spec "$0.01-0.05"; its cost table uses $0.03',
    configured=lambda settings: settings.replicate_api_token is not None,
    build=_build,
    secret_fields=("replicate_api_token",),
    quality_rank=1,
    credentials_block=CredentialsBlock.one_key_with_base_url(
        "Studio Replicate Credentials",
        "ReplicateCredentials",
        "Replicate FLUX: the API token and the base URL it is sent to (default Replicate's).",
        key=("api_token", "REPLICATE_API_TOKEN"),
        url_env="REPLICATE_BASE_URL",
        default_url=REPLICATE_DEFAULT_BASE_URL,
    ),
    find_job=find_job,
)
