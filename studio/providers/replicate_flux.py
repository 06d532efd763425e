"""Replicate FLUX + LoRA through the official `replicate` client.

The model (REPLICATE_MODEL, `owner/name` or `owner/name:version`) gets the avatar's LoRA
weights URL in its LoRA input (REPLICATE_LORA_INPUT, `lora_weights` for
black-forest-labs/flux-dev-lora). Creation uses `Prefer: wait` so a fast prediction
comes back in one round trip; otherwise the client polls.

The client's own retry transport never retries a POST, so a 429 on create would fail
the attempt although Replicate says exactly when to come back: `ThrottleRetry` wraps
the transport and re-sends a throttled POST after its Retry-After.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time

import httpx
import replicate
from replicate.exceptions import ModelError, ReplicateError

from studio.providers.base import ProviderError, ProviderImage
from studio.providers.comfyui import seed_for
from studio.types import AvatarRef, PieceSpec

logger = logging.getLogger("studio.providers")

NOT_RETRYABLE = {400, 401, 402, 403, 404, 422}


def retry_after_seconds(value: str | None, default: float = 1.0) -> float:
    """Retry-After as seconds (a number, or an HTTP date)."""
    if not value:
        return default
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max(0.0, when.timestamp() - time.time())


class ThrottleRetry(httpx.AsyncBaseTransport):
    """Re-sends a POST answered 429 after its Retry-After, at most `max_retries` times."""

    def __init__(self, wrapped: httpx.AsyncBaseTransport, *, max_retries: int = 5) -> None:
        self._wrapped = wrapped
        self.max_retries = max_retries

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        retries = 0
        while True:
            response = await self._wrapped.handle_async_request(request)
            if (
                request.method != "POST"
                or response.status_code != 429
                or retries >= self.max_retries
            ):
                return response
            retries += 1
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            await response.aclose()
            logger.info(
                "provider_throttled provider=replicate retry=%d retry_after=%.2fs", retries, wait
            )
            await asyncio.sleep(wait)

    async def aclose(self) -> None:
        await self._wrapped.aclose()


class ReplicateFluxProvider:
    name = "replicate"
    stand_in = False

    def __init__(
        self,
        api_token: str,
        *,
        base_url: str = "https://api.replicate.com",
        model: str = "black-forest-labs/flux-dev-lora",
        lora_input: str = "lora_weights",
        price_usd: float = 0.03,
        poll_interval: float = 0.5,
        throttle_retries: int = 5,
        wait_seconds: int = 60,
    ) -> None:
        self.model = model
        self.lora_input = lora_input
        self.price_usd = price_usd
        self.wait_seconds = max(1, min(60, int(wait_seconds)))
        transport = ThrottleRetry(
            httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=20)
            ),
            max_retries=throttle_retries,
        )
        self._client = replicate.Client(
            api_token=api_token,
            base_url=base_url,
            timeout=httpx.Timeout(30.0, connect=10.0),
            transport=transport,
        )
        self._client.poll_interval = poll_interval
        # files are fetched without the API token: delivery URLs need none
        self._files = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))

    async def aclose(self) -> None:
        await self._files.aclose()

    def _input(self, spec: PieceSpec, avatar: AvatarRef) -> dict[str, object]:
        return {
            "prompt": spec.prompt,
            self.lora_input: avatar.lora_weights_url,
            "lora_scale": 0.8,
            "seed": seed_for(spec.piece_id) % 2**31,
            "num_outputs": 1,
            "aspect_ratio": "1:1",
            "output_format": "png",
        }

    async def generate(self, spec: PieceSpec, avatar: AvatarRef) -> ProviderImage:
        if not avatar.lora_weights_url:
            raise ProviderError(self.name, "avatar has no LoRA weights", retryable=False)
        try:
            prediction = await self._create(self._input(spec, avatar))
        except ReplicateError as exc:
            raise ProviderError(
                self.name,
                f"create answered HTTP {exc.status}: {exc.title or 'error'}",
                retryable=exc.status not in NOT_RETRYABLE,
            ) from None
        except httpx.HTTPError as exc:
            raise ProviderError(self.name, f"create failed: {type(exc).__name__}") from None
        try:
            await prediction.async_wait()
            if prediction.status != "succeeded":
                raise ModelError(prediction)
            return await self._download(prediction.output)
        except asyncio.CancelledError:
            await asyncio.shield(self._cancel(prediction.id))
            raise
        except ModelError:
            raise ProviderError(self.name, f"prediction {prediction.status}") from None
        except ReplicateError as exc:
            raise ProviderError(self.name, f"poll answered HTTP {exc.status}") from None
        except httpx.HTTPError as exc:
            raise ProviderError(self.name, f"poll failed: {type(exc).__name__}") from None

    async def _create(self, inputs: dict[str, object]) -> replicate.prediction.Prediction:
        if ":" in self.model:
            _, version = self.model.split(":", 1)
            return await self._client.predictions.async_create(
                version=version, input=inputs, wait=self.wait_seconds
            )
        owner, name = self.model.split("/", 1)
        return await self._client.models.predictions.async_create(
            model=(owner, name), input=inputs, wait=self.wait_seconds
        )

    async def _download(self, output: object) -> ProviderImage:
        url = output[0] if isinstance(output, list) and output else output
        if not isinstance(url, str) or not url:
            raise ProviderError(self.name, "prediction succeeded without an output file")
        response = await self._files.get(url)
        if response.status_code != 200:
            raise ProviderError(self.name, f"output download answered HTTP {response.status_code}")
        content_type = response.headers.get("content-type", "image/png").split(";")[0]
        return ProviderImage(response.content, content_type, self.price_usd)

    async def _cancel(self, prediction_id: str) -> None:
        """Best effort: stop a prediction we no longer wait for, so it is not billed on."""
        try:
            await asyncio.wait_for(self._client.predictions.async_cancel(prediction_id), 2.0)
        except (ReplicateError, httpx.HTTPError, TimeoutError):
            pass
