"""Health probes: ask each configured provider and store whether it answers, now.

Why: a health check that reads the configuration only reports a ComfyUI on a dead
port as `available` and the set-up as `healthy`. Each probe
here makes the cheapest request that proves the component works, under one short
timeout (HEALTH_PROBE_TIMEOUT_SECONDS, default 3), and they run concurrently, so the
check takes about one timeout however many components are down:

| component | probe |
|---|---|
| ComfyUI | `GET /system_stats` |
| Modal | `GET` on the web endpoint with the token headers (see below) |
| Replicate | `GET /v1/account` (authenticated, free) |
| Anthropic | `GET /v1/models` (authenticated, free) |
| OpenAI | `GET /v1/models` (authenticated, free) |
| object store | `head_bucket` on the content and the private bucket |
| Prefect API | `GET /api/health` |

Modal's endpoint is a web endpoint: only `POST` creates a function call (a billed job),
so the probe is a `GET`, which any reachable endpoint answers (405 or 404 when it takes
POST only); any answer but 401/403/5xx counts as reachable.

A probe never raises and never follows a redirect (a key goes to its configured origin
only); its answer names the failure by type or HTTP status, never a response body or a
key. The database probe lives in `studio.health` (it reuses the schema check).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
DEFAULT_TIMEOUT_SECONDS = 3.0
ANTHROPIC_DEFAULT_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"

Probe = dict[str, Any]


class ProbeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    timeout_seconds: float = Field(
        default=DEFAULT_TIMEOUT_SECONDS, alias="HEALTH_PROBE_TIMEOUT_SECONDS", gt=0, le=60
    )


def probe_timeout() -> tuple[float, str | None]:
    """The probes' timeout, and the configuration error (then the default is used)."""
    try:
        return ProbeSettings().timeout_seconds, None
    except ValidationError:
        return DEFAULT_TIMEOUT_SECONDS, (
            "HEALTH_PROBE_TIMEOUT_SECONDS must be a number of seconds above 0 and at most 60"
        )


def result(status: str, reason: str, started: float, **extra: Any) -> Probe:
    return {
        "status": status,
        "reason": reason,
        "response_ms": round((time.perf_counter() - started) * 1000, 1),
        **extra,
    }


def _failure(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return f"no answer within {timeout:g}s (HEALTH_PROBE_TIMEOUT_SECONDS)"
    if isinstance(exc, httpx.ConnectError):
        return "unreachable: connection refused or host unknown"
    return f"unreachable: {type(exc).__name__}"


async def http_probe(
    client: httpx.AsyncClient,
    url: str,
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
    healthy_when: Callable[[int], bool] = lambda status: status == 200,
) -> Probe:
    """GET `url` once; healthy when `healthy_when(status)`, else unhealthy naming the status."""
    started = time.perf_counter()
    try:
        response = await client.get(url, headers=headers or {}, timeout=timeout)
    except Exception as exc:  # a probe reports, never raises
        return result(UNHEALTHY, _failure(exc, timeout), started)
    status = response.status_code
    if healthy_when(status):
        return result(HEALTHY, f"answered HTTP {status}", started)
    if status in (401, 403):
        return result(UNHEALTHY, f"credentials refused (HTTP {status})", started)
    return result(UNHEALTHY, f"answered HTTP {status}", started)


def _modal_reachable(status: int) -> bool:
    """A web endpoint answers GET with 405/404/400 when it only takes POST: reachable."""
    return status < 500 and status not in (401, 403)


def _join(base: str, path: str) -> str:
    return f"{base.rstrip('/')}/{path.lstrip('/')}"


def image_probes(client: httpx.AsyncClient, timeout: float) -> dict[str, Awaitable[Probe]]:
    """One probe per image provider that is configured (or has an endpoint set)."""
    from studio.providers.settings import ProviderSettings

    s = ProviderSettings()
    probes: dict[str, Awaitable[Probe]] = {}
    if s.comfyui_enabled or "comfyui_endpoint" in s.model_fields_set:
        probes["comfyui"] = http_probe(
            client, _join(s.comfyui_endpoint, "system_stats"), timeout=timeout
        )
    if s.modal_sdxl_endpoint:
        headers = {}
        if s.modal_token_id is not None and s.modal_token_secret is not None:
            headers = {
                "Modal-Key": s.modal_token_id.get_secret_value(),
                "Modal-Secret": s.modal_token_secret.get_secret_value(),
            }
        probes["modal"] = http_probe(
            client, s.modal_sdxl_endpoint, timeout=timeout, headers=headers,
            healthy_when=_modal_reachable,
        )
    if s.replicate_api_token is not None:
        token = s.replicate_api_token.get_secret_value()
        probes["replicate"] = http_probe(
            client, _join(s.replicate_base_url, "v1/account"), timeout=timeout,
            headers={"Authorization": f"Bearer {token}"},
        )
    return probes


def api_probes(client: httpx.AsyncClient, timeout: float) -> dict[str, Awaitable[Probe]]:
    """The hosted APIs of hooks (Anthropic) and moderation (OpenAI), when keyed."""
    from studio.hooks.settings import HookSettings
    from studio.moderation.settings import ModerationSettings

    probes: dict[str, Awaitable[Probe]] = {}
    hooks = HookSettings()
    if hooks.configured and hooks.anthropic_api_key is not None:
        base = hooks.anthropic_base_url or ANTHROPIC_DEFAULT_BASE_URL
        probes["anthropic"] = http_probe(
            client, _join(base, "v1/models"), timeout=timeout,
            headers={
                "x-api-key": hooks.anthropic_api_key.get_secret_value(),
                "anthropic-version": ANTHROPIC_VERSION,
            },
        )
    moderation = ModerationSettings()
    if moderation.configured and moderation.openai_api_key is not None:
        key = moderation.openai_api_key.get_secret_value()
        probes["openai"] = http_probe(
            client, _join(moderation.api_base_url, "models"), timeout=timeout,
            headers={"Authorization": f"Bearer {key}"},
        )
    return probes


def prefect_api_probe(
    client: httpx.AsyncClient, timeout: float, url: str | None
) -> Awaitable[Probe] | None:
    """`GET /api/health` of the Prefect API at `url` (exempt from the server's auth); None
    when there is none (the local API is started by the commands that need it). The
    caller reads Prefect's setting: the domain imports no Prefect."""
    if not url:
        return None
    return http_probe(client, _join(url, "health"), timeout=timeout)


def _head_buckets(buckets: list[str], timeout: float) -> Probe:
    """head_bucket on each bucket, one attempt each under the probe's timeouts (the
    store's own client retries for longer: right for uploads, too slow for a probe)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    from studio.storage.settings import StorageSettings

    started = time.perf_counter()
    settings = StorageSettings()
    assert settings.r2_secret_access_key is not None
    config = Config(
        signature_version="s3v4", region_name="auto", s3={"addressing_style": "path"},
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=timeout, read_timeout=timeout,
    )
    s3 = boto3.session.Session().client(
        "s3", endpoint_url=settings.endpoint_url, aws_access_key_id=settings.r2_access_key_id,
        aws_secret_access_key=settings.r2_secret_access_key.get_secret_value(),
        region_name="auto", config=config,
    )
    for bucket in buckets:
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            what = {403: "access denied (check the R2 keys)", 404: "no such bucket"}.get(
                status, f"answered HTTP {status}"
            )
            level = UNHEALTHY if status in (401, 403, 404) else DEGRADED
            return result(level, f"bucket {bucket}: {what}", started)
        except Exception as exc:  # unreachable: pieces are kept locally, storage-sync uploads
            return result(
                DEGRADED,
                f"bucket {bucket}: {_failure(exc, timeout)}; pieces are kept locally "
                "(stored_locally) until `studio storage-sync`",
                started,
            )
    return result(HEALTHY, f"buckets answer: {', '.join(buckets)}", started)


async def storage_probe(timeout: float) -> Probe | None:
    """The object store's buckets, when R2/S3 is in use; None for the local store."""
    from studio.storage.settings import StorageSettings

    settings = StorageSettings()
    if not settings.use_r2 or settings.misconfiguration():
        return None
    named = (settings.r2_bucket_name, settings.private_bucket)
    buckets = list(dict.fromkeys(b for b in named if b))
    started = time.perf_counter()
    try:
        return await asyncio.wait_for(
            asyncio.to_thread(_head_buckets, buckets, timeout), timeout * (len(buckets) + 1)
        )
    except Exception as exc:
        return result(DEGRADED, f"object store: {_failure(exc, timeout)}", started)


async def run_probes(timeout: float, prefect_api_url: str | None = None) -> dict[str, Probe]:
    """Every applicable probe at once: {component: probe result}. `prefect_api_url`
    defaults to PREFECT_API_URL from the environment."""
    prefect_api_url = prefect_api_url or os.environ.get("PREFECT_API_URL")
    async with httpx.AsyncClient(follow_redirects=False) as client:
        probes: dict[str, Awaitable[Probe]] = {
            **image_probes(client, timeout),
            **api_probes(client, timeout),
        }
        prefect = prefect_api_probe(client, timeout, prefect_api_url)
        if prefect is not None:
            probes["prefect_api"] = prefect
        probes["storage"] = storage_probe(timeout)  # type: ignore[assignment]
        names = list(probes)
        answers = await asyncio.gather(*(probes[n] for n in names))
    return {name: answer for name, answer in zip(names, answers, strict=True) if answer}
