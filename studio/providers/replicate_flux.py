"""Replicate FLUX + LoRA through the official `replicate` client.

The model (REPLICATE_MODEL, `owner/name` or `owner/name:version`) gets the avatar's LoRA
weights URL in its LoRA input (REPLICATE_LORA_INPUT, `lora_weights` for
black-forest-labs/flux-dev-lora). Creation uses `Prefer: wait` so a fast prediction
comes back in one round trip; otherwise the client polls.

Format and LoRA weight: FLUX takes no width/height but an `aspect_ratio` from an enum
(1:1, 16:9, 21:9, 3:2, 2:3, 4:5, 5:4, 3:4, 4:3, 9:16, 9:21 on black-forest-labs/flux-dev,
flux-schnell and flux-dev-lora), so the piece's aspect ratio is sent as the enum's
spelling of the same ratio ("18:32" as "9:16"; none: "1:1"). A ratio the enum lacks is
sent as it is: the batch refuses such a format before it starts
(`studio.formats.format_refusal`), and a model of the studio's own may accept more;
Replicate answers 422 otherwise, a failure without retry. `lora_scale` (-1 to 3 on
flux-dev-lora) is the avatar's `lora_strength`.

The output may be a list of files or one file, each an `https://` delivery URL or (in
sync mode) a `data:` URI: the SDK's `FileOutput` reads both, so no hand-written fetching
(httpx alone refuses `data:`, which once lost every sync-mode image after it was paid
for). Any other shape fails the attempt as "unexpected output shape: ..." (retryable).

Money: a prediction is billed once created, so its id goes to `job.created(...)` the
moment the create answer arrives, and a retry with `job.resume_job_id` fetches that
prediction (and its output) before it would create, and pay for, another one.

The client's own retry transport never retries a POST, so a 429 on create would fail
the attempt although Replicate says exactly when to come back: `ThrottleRetry` wraps
the transport and re-sends a throttled POST after its Retry-After, or, under the chain's
fleet slot, raises ProviderThrottled so the chain gives the slot back and asks again in
turn (studio/providers/chain.py); REPLICATE_THROTTLE_RETRIES (5) bounds either.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import time
from typing import Any

import httpx
import replicate
from pydantic.v1 import ValidationError
from replicate.exceptions import ReplicateError
from replicate.helpers import FileOutput, transform_output
from replicate.prediction import Prediction

from studio.formats import DEFAULT_ASPECT, FormatError, replicate_aspect_ratio
from studio.providers import pace
from studio.providers.base import (
    BilledJob,
    NoJobTracking,
    ProviderError,
    ProviderImage,
    ProviderThrottled,
    backed_off,
    requeue_throttled,
)
from studio.providers.comfyui import seed_for
from studio.providers.same_origin import RedirectRefused, pin_origin, refuse_redirects
from studio.providers.shapes import UnexpectedShape, sniff_image
from studio.providers.tls import client_context
from studio.types import AvatarRef, PieceSpec

logger = logging.getLogger("studio.providers")

NOT_RETRYABLE = {400, 401, 402, 403, 404, 422}
#: statuses a prediction ends in; "aborted" (ended before it started, e.g. a deadline)
#: is newer than replicate 1.0.7's model, see `_reload`
TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
#: a job in one of these never delivers: a retry creates a new one
DEAD = frozenset({"failed", "canceled", "aborted"})
#: a delivery URL that answers these no longer holds the file (retention ended)
GONE = frozenset({404, 410})

def flux_aspect_ratio(aspect_ratio: str | None) -> str:
    """What FLUX's `aspect_ratio` input is sent for a piece's ratio (module docstring)."""
    if aspect_ratio is None:
        return DEFAULT_ASPECT
    try:
        return replicate_aspect_ratio(aspect_ratio) or aspect_ratio
    except FormatError:
        return aspect_ratio  # not a ratio at all: Replicate's 422 names it


def describe_shape(value: Any) -> str:
    """A short name for an output value, for error messages (never the value itself)."""
    if isinstance(value, list):
        return "empty list" if not value else f"list whose first item is {describe_shape(value[0])}"
    if isinstance(value, str):
        if not value:
            return "an empty string"
        return "a string that is neither a URL nor a data URI"
    if value is None:
        return "no output"
    return f"a {type(value).__name__}"


class OutputGone(Exception):
    """A finished prediction whose output can no longer be had (a retry must re-create)."""


def retry_after_seconds(value: str | None, default: float = 1.0) -> float:
    """Retry-After as seconds (a number, or an HTTP date); `default` when absent or
    unreadable (the reading itself is pace.retry_after_seconds, shared with the fleet)."""
    seconds = pace.retry_after_seconds(value)
    return default if seconds is None else seconds


class ThrottleRetry(httpx.AsyncBaseTransport):
    """Re-sends a POST answered 429 after its Retry-After (backed off on repeats), at most
    `max_retries` times; under the chain's fleet slot (`requeue_throttled`) it raises
    ProviderThrottled at once instead, and the chain asks again in turn."""

    def __init__(self, wrapped: httpx.AsyncBaseTransport, *, max_retries: int = 5) -> None:
        self._wrapped = wrapped
        self.max_retries = max_retries

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        retries = 0
        while True:
            if request.method == "POST":  # a create starts a billed job: the fleet's turn
                await pace.before_call("replicate")
            sent_at = time.time()
            response = await self._wrapped.handle_async_request(request)
            pace.note_answer("replicate", request.method, response.status_code,
                             response.headers, sent_at)
            if (
                request.method != "POST"
                or response.status_code != 429
                or retries >= self.max_retries
            ):
                return response
            retries += 1
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            await response.aclose()
            if requeue_throttled.get():
                raise ProviderThrottled(
                    "replicate", "create answered HTTP 429 (throttled)", retry_after=retry_after
                )
            logger.info(
                "provider_throttled provider=replicate retry=%d retry_after=%.2fs",
                retries, retry_after,
            )
            await asyncio.sleep(backed_off(retry_after, retries))

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
        self.throttle_retries = throttle_retries  # the chain's new tries of a throttled create
        self.lora_input = lora_input
        self.price_usd = price_usd
        self.wait_seconds = max(1, min(60, int(wait_seconds)))
        transport = ThrottleRetry(
            httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
                verify=client_context(),
            ),
            max_retries=throttle_retries,
        )
        self._client = replicate.Client(
            api_token=api_token,
            base_url=base_url,
            timeout=httpx.Timeout(60.0, connect=10.0),
            transport=transport,
            # the SDK follows no redirects today (a 3xx is an error here); should it
            # ever, the token stays on the base URL's origin
            event_hooks={"request": [pin_origin(base_url)], "response": [refuse_redirects]},
        )
        self._client.poll_interval = poll_interval
        self._delivery = _DeliveryClient()

    async def aclose(self) -> None:
        # the SDK builds its async httpx client lazily and offers no close of its own
        await self._client._async_client.aclose()
        await self._delivery._async_client.aclose()

    def _input(self, spec: PieceSpec, avatar: AvatarRef) -> dict[str, object]:
        return {
            "prompt": spec.prompt,
            self.lora_input: avatar.lora_weights_url,
            "lora_scale": avatar.lora_strength,
            "seed": seed_for(spec.piece_id) % 2**31,
            "num_outputs": 1,
            "aspect_ratio": flux_aspect_ratio(spec.aspect_ratio),
            "output_format": "png",
        }

    async def generate(
        self, spec: PieceSpec, avatar: AvatarRef, job: BilledJob | None = None
    ) -> ProviderImage:
        job = job or NoJobTracking()
        if not avatar.lora_weights_url:
            raise ProviderError(self.name, "avatar has no LoRA weights", retryable=False)
        if job.resume_job_id:
            resumed = await self._resume(job.resume_job_id)
            if resumed is not None:
                try:
                    return await self._finish(resumed, sync_answer=False)
                except (OutputGone, UnexpectedShape) as exc:
                    # gone, or an output that would be as unusable on every re-fetch
                    outcome = "output-gone" if isinstance(exc, OutputGone) else "bad-shape"
                    logger.info(
                        "provider_resume provider=replicate job=%s outcome=%s",
                        resumed.id, outcome,
                    )
        prediction = await self._create_billed(self._input(spec, avatar), job)
        try:
            return await self._finish(prediction, sync_answer=True)
        except OutputGone:
            raise ProviderError(self.name, "output file gone right after the prediction") from None

    async def _create_billed(self, inputs: dict[str, object], job: BilledJob) -> Prediction:
        try:
            prediction = await self._create(inputs)
        except ReplicateError as exc:
            raise ProviderError(
                self.name,
                f"create answered HTTP {exc.status}: {_problem_text(exc)}",
                retryable=exc.status not in NOT_RETRYABLE,
            ) from None
        except ValidationError:
            shape = "create answer of an unknown prediction status"
            raise UnexpectedShape(self.name, shape) from None
        except RedirectRefused as exc:  # a base URL sending us elsewhere: asking again won't help
            raise ProviderError(self.name, f"create {exc}", retryable=False) from None
        except httpx.HTTPError as exc:
            raise ProviderError(self.name, f"create failed: {type(exc).__name__}") from None
        job.created(prediction.id)  # billed from here on, whatever happens to the output
        return prediction

    async def _resume(self, prediction_id: str) -> Prediction | None:
        """The earlier prediction when it can still deliver; None when it is gone or dead."""
        try:
            prediction = await self._client.predictions.async_get(prediction_id)
        except ReplicateError as exc:
            if exc.status in GONE:
                outcome = "gone"
            elif exc.status in NOT_RETRYABLE:
                raise ProviderError(
                    self.name, f"resume answered HTTP {exc.status}: {_problem_text(exc)}",
                    retryable=False,
                ) from None
            else:
                raise ProviderError(self.name, f"resume answered HTTP {exc.status}") from None
        except ValidationError:
            outcome = "unknown-status"
        except httpx.HTTPError as exc:
            raise ProviderError(self.name, f"resume failed: {type(exc).__name__}") from None
        else:
            if prediction.status == "succeeded" and (
                prediction.output is None or getattr(prediction, "data_removed", False)
            ):
                outcome = "data-removed"  # Replicate's one-hour clean-up ran
            elif prediction.status not in DEAD:
                logger.info(
                    "provider_resume provider=replicate job=%s outcome=%s",
                    prediction_id, prediction.status,
                )
                return prediction
            else:
                outcome = prediction.status
        logger.info("provider_resume provider=replicate job=%s outcome=%s", prediction_id, outcome)
        return None

    async def _finish(self, prediction: Prediction, *, sync_answer: bool) -> ProviderImage:
        """Wait for the prediction and read its output file; cancel it if we give up.

        A sync-mode answer may carry every output file while its status still says
        "processing" (Replicate answers as soon as the files exist; the SDK's `run`
        takes them then too), so those are read without polling to the end.
        """
        try:
            if sync_answer and prediction.status == "processing" and prediction.output:
                return await self._read_output(prediction.output)
            status = await self._wait(prediction)
            if status != "succeeded":
                raise ProviderError(self.name, f"prediction {status}")
            return await self._read_output(prediction.output)
        except asyncio.CancelledError:
            await asyncio.shield(self._cancel(prediction.id))
            raise
        except ReplicateError as exc:
            raise ProviderError(self.name, f"poll answered HTTP {exc.status}") from None
        except httpx.HTTPError as exc:
            raise ProviderError(self.name, f"poll failed: {type(exc).__name__}") from None

    async def _wait(self, prediction: Prediction) -> str:
        """Until the prediction ends; its final status (`prediction` is updated in place)."""
        status = prediction.status
        while status not in TERMINAL:
            await asyncio.sleep(self._client.poll_interval)
            status = await self._reload(prediction)
        return status

    async def _reload(self, prediction: Prediction) -> str:
        """The SDK's reload, except for statuses replicate 1.0.7's model refuses.

        Workaround of replicate/replicate-python#460 (status "aborted" added after
        1.0.7): the model's status Literal raises a pydantic ValidationError on it, so
        the raw answer's status is read instead and the prediction ends there.
        """
        try:
            await prediction.async_reload()
        except ValidationError:
            response = await self._client._async_request("GET", f"/v1/predictions/{prediction.id}")
            status = str(response.json().get("status"))
            return status if status in TERMINAL else "aborted"
        return prediction.status

    async def _read_output(self, output: object) -> ProviderImage:
        """The first output file through the SDK's FileOutput (https:, http: or data:)."""
        first = output[0] if isinstance(output, list) and output else output
        if not isinstance(first, str) or not first.startswith(("https://", "http://", "data:")):
            raise UnexpectedShape(self.name, describe_shape(output))
        delivery: Any = self._delivery  # FileOutput needs only the client's _async_client
        decoded = transform_output(first, delivery)
        # the SDK wraps only https: and data:; a Replicate-compatible endpoint may use http:
        file = decoded if isinstance(decoded, FileOutput) else FileOutput(first, delivery)
        try:
            data = await file.aread()
        except (binascii.Error, ValueError):
            raise UnexpectedShape(self.name, "data URI that is not base64") from None
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            if status in GONE:
                raise OutputGone from None
            raise ProviderError(self.name, f"output download answered HTTP {status}") from None
        except httpx.HTTPError as exc:
            raise ProviderError(
                self.name, f"output download failed: {type(exc).__name__}"
            ) from None
        content_type = sniff_image(data)
        if content_type is None:
            raise UnexpectedShape(self.name, "file that is not an image")
        return ProviderImage(data, content_type, self.price_usd)

    async def _create(self, inputs: dict[str, object]) -> Prediction:
        if ":" in self.model:
            _, version = self.model.split(":", 1)
            return await self._client.predictions.async_create(
                version=version, input=inputs, wait=self.wait_seconds
            )
        owner, name = self.model.split("/", 1)
        return await self._client.models.predictions.async_create(
            model=(owner, name), input=inputs, wait=self.wait_seconds
        )

    async def _cancel(self, prediction_id: str) -> None:
        """Best effort: stop a prediction we no longer wait for, so it is not billed on."""
        try:
            await asyncio.wait_for(self._client.predictions.async_cancel(prediction_id), 2.0)
        except (ReplicateError, ValidationError, httpx.HTTPError, TimeoutError):
            pass


class _DeliveryClient:
    """What `FileOutput` reads files through: an httpx client WITHOUT the API token.

    Given the `replicate.Client`, FileOutput would send `Authorization: Bearer <token>`
    to every output URL; delivery URLs need none, and a Replicate-compatible endpoint
    may point them at another host, where the token must not go. FileOutput only uses
    the client's `_async_client`, so this is that and nothing more.
    """

    def __init__(self) -> None:
        self._async_client = httpx.AsyncClient(
            timeout=httpx.Timeout(60.0, connect=10.0), follow_redirects=True,
            verify=client_context(),
        )


def _problem_text(exc: ReplicateError) -> str:
    """title and detail of an RFC 7807 problem body, cut short (they quote no secrets)."""
    text = " - ".join(part for part in (exc.title, exc.detail) if part) or "error"
    return text if len(text) <= 200 else text[:197] + "..."
