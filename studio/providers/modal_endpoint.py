"""Modal SDXL + LoRA through a deployed web endpoint (MODAL_SDXL_ENDPOINT).

The endpoint is protected by Modal's proxy auth: the token pair goes in the
`Modal-Key`/`Modal-Secret` headers. Modal answers a request that runs longer than
150 s with `303 See Other` to a result URL (`?__modal_function_call_id=fc-...`) that
"can be reloaded without triggering a new request" and may answer 303 again.

The endpoint is our own (`modal.fastapi_endpoint`), so its body is our contract: a JSON
object, answered 200 with the image bytes, or 422 `{"detail": [...]}` (FastAPI's
validation error) naming each bad field:

- `prompt` (string, required): the piece's prompt, trigger words included;
- `negative_prompt` (string): what SDXL steers away from;
- `lora_url` (string, required): the avatar's LoRA weights;
- `lora_strength` (number, -1 to 3, default 1.0): the LoRA's weight, the avatar's
  `lora_strength` (the same range as Replicate's FLUX `lora_scale`);
- `seed` (integer): derived from the piece id, so a retry makes the same image;
- `width`, `height` (integers, multiples of 64, 512 to 2048, default 1024): the
  SDXL-native size of the piece's aspect ratio (`studio/formats.py`; a piece planned
  without a format is square 1024x1024);
- `num_inference_steps` (integer): sampler steps.

Redirects are followed here, not by httpx, because the first 303 carries the job id:
the function call is billed from the moment the endpoint accepted the request, so
`job.created(...)` is told then (with the call id when Modal gave one), and a retry with
`job.resume_job_id` reloads that call's result URL before it would pay for a new call.
A 200 whose body is not an image fails as "unexpected output shape: ..." (retryable).

The token pair is a client header, and httpx keeps custom headers on a redirect to another
origin (it drops only `Authorization`), so the client is pinned to the endpoint's origin
(`studio/providers/same_origin.py`): a 303 to another origin, or a stored result URL on
another origin, is refused before anything is sent there, and fails the attempt without
a retry (the call may be billed; asking again would pay for another one to go the same way).
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlparse

import httpx
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from studio.formats import FormatError, sdxl_size
from studio.ledger.dead_runs import JobAnswer, OpenRow
from studio.providers import pace
from studio.providers.base import BilledJob, NoJobTracking, ProviderError, ProviderImage
from studio.providers.comfyui import NEGATIVE_PROMPT, seed_for
from studio.providers.entry import (
    CANNOT_TELL,
    LOOKUP_TIMEOUT,
    BlockField,
    CredentialsBlock,
    ProviderEntry,
    Tuning,
)
from studio.providers.same_origin import ForeignOrigin, origin_of, pin_origin
from studio.providers.shapes import UnexpectedShape, sniff_image
from studio.types import AvatarRef, PieceSpec

logger = logging.getLogger("studio.providers")

#: statuses where asking again cannot help (auth, missing endpoint, bad body)
NOT_RETRYABLE = {400, 401, 403, 404, 405, 422}
REDIRECTS = {301, 302, 303, 307, 308}
CALL_ID = "__modal_function_call_id"
#: a piece planned without a format (before issue 18): SDXL's square size
DEFAULT_SIZE = (1024, 1024)
#: transport failures before the request reached the endpoint: nothing was billed
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class _ResultGone(Exception):
    """The call's result URL no longer knows it (or the call failed): make a new call."""


class ModalSDXLProvider:
    name = "modal"
    stand_in = False

    def __init__(
        self,
        endpoint: str,
        *,
        token_id: str | None = None,
        token_secret: str | None = None,
        price_usd: float = 0.01,
        timeout: float = 300.0,
        max_redirects: int = 20,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        headers = {}
        if token_id and token_secret:
            headers = {"Modal-Key": token_id, "Modal-Secret": token_secret}
        self.endpoint = endpoint
        self.price_usd = price_usd
        self.max_redirects = max_redirects
        fleet = pace.event_hooks("modal")  # throttling reported, Retry-After honoured
        self._client = client or httpx.AsyncClient(
            headers=headers,
            follow_redirects=False,
            # the token headers go to the endpoint's origin only, whatever a 303 says
            event_hooks={
                "request": [pin_origin(endpoint), *fleet["request"]],
                "response": fleet["response"],
            },
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def generate(
        self, spec: PieceSpec, avatar: AvatarRef, job: BilledJob | None = None
    ) -> ProviderImage:
        job = job or NoJobTracking()
        if not avatar.lora_weights_url:
            raise ProviderError(self.name, "avatar has no LoRA weights", retryable=False)
        if job.resume_job_id:
            try:
                return await self._resume(job.resume_job_id)
            except (_ResultGone, UnexpectedShape) as exc:
                # gone, failed, or a body that would be as unusable on every reload
                outcome = "gone" if isinstance(exc, _ResultGone) else "bad-shape"
                logger.info(
                    "provider_resume provider=modal job=%s outcome=%s",
                    job.resume_job_id, outcome,
                )
        width, height = self._size(spec)
        body = {
            "prompt": spec.prompt,
            "negative_prompt": NEGATIVE_PROMPT,
            "lora_url": avatar.lora_weights_url,
            "lora_strength": avatar.lora_strength,
            "seed": seed_for(spec.piece_id),
            "width": width,
            "height": height,
            "num_inference_steps": 30,
        }
        try:
            response = await self._client.post(self.endpoint, json=body)
        except NOT_SENT as exc:
            raise ProviderError(self.name, f"request failed: {type(exc).__name__}") from None
        except httpx.HTTPError as exc:
            job.created(None)  # sent: the call may be running (and billed) without an answer
            raise ProviderError(self.name, f"request failed: {type(exc).__name__}") from None
        if response.status_code in REDIRECTS:
            job.created(self._job_id(response))
        elif response.status_code < 400 or (
            response.status_code >= 500 and not _from_front_door(response)
        ):
            job.created(None)  # the function ran (or may have): billed, nothing to resume
        try:
            return await self._result(response)
        except _ResultGone:
            raise ProviderError(self.name, "result URL answered HTTP 404") from None

    def _size(self, spec: PieceSpec) -> tuple[int, int]:
        """The piece's width and height; from its aspect ratio when only that is set.

        A plan made before formats existed has neither: square 1024x1024, as before.
        """
        if spec.width and spec.height:
            return spec.width, spec.height
        if spec.aspect_ratio:
            try:
                return sdxl_size(spec.aspect_ratio)
            except FormatError as exc:
                raise ProviderError(self.name, str(exc), retryable=False) from None
        return DEFAULT_SIZE

    def _job_id(self, response: httpx.Response) -> str | None:
        """The call id from the 303's result URL, or the URL itself when it has none.

        None for a result URL on another origin: it will not be followed, so there is
        nothing a later attempt could resume (the call still counts as billed).
        """
        url = response.url.join(response.headers.get("location", ""))
        if origin_of(url) != origin_of(self.endpoint):
            return None
        location = str(url)
        ids = parse_qs(urlparse(location).query).get(CALL_ID)
        return ids[0] if ids else location

    def _result_url(self, job_id: str) -> httpx.URL:
        if job_id.startswith(("http://", "https://")):
            return httpx.URL(job_id)
        return httpx.URL(self.endpoint).copy_merge_params({CALL_ID: job_id})

    def _refuse_foreign(self, url: httpx.URL, what: str) -> None:
        """Raise (not retryable) when `url` is on another origin than the endpoint."""
        if origin_of(url) != origin_of(self.endpoint):
            raise ProviderError(
                self.name,
                f"{what} points to another origin ({url.scheme}://{url.host}): "
                "not followed, the Modal token goes to the endpoint's origin only",
                retryable=False,
            )

    async def _resume(self, job_id: str) -> ProviderImage:
        url = self._result_url(job_id)
        self._refuse_foreign(url, "the stored result URL")
        try:
            response = await self._client.get(url)
        except ForeignOrigin as exc:
            raise ProviderError(self.name, str(exc), retryable=False) from None
        except httpx.HTTPError as exc:
            raise ProviderError(self.name, f"resume failed: {type(exc).__name__}") from None
        if response.status_code == 500:
            raise _ResultGone  # that call failed: a new one may succeed
        return await self._result(response)

    async def _result(self, response: httpx.Response) -> ProviderImage:
        """Follow 303s to the result and read the image (the response is the first answer)."""
        redirects = 0
        while response.status_code in REDIRECTS:
            redirects += 1
            if redirects > self.max_redirects:
                raise ProviderError(
                    self.name, f"result still pending after {self.max_redirects} 303s"
                )
            url = response.url.join(response.headers.get("location", ""))
            self._refuse_foreign(url, f"HTTP {response.status_code} redirect")
            try:
                response = await self._client.get(url)
            except ForeignOrigin as exc:
                raise ProviderError(self.name, str(exc), retryable=False) from None
            except httpx.HTTPError as exc:
                raise ProviderError(
                    self.name, f"result request failed: {type(exc).__name__}"
                ) from None
        status = response.status_code
        if status == 404 and (redirects or CALL_ID in response.url.params):
            raise _ResultGone
        if status != 200:
            raise ProviderError(
                self.name,
                f"endpoint answered HTTP {status}"
                + (f" after {redirects} redirect(s)" if redirects else "")
                + (f": {_validation_text(response)}" if status == 422 else ""),
                retryable=status not in NOT_RETRYABLE,
            )
        content_type = sniff_image(response.content)
        if content_type is None:
            declared = response.headers.get("content-type", "").split(";")[0] or "no content type"
            shape = "empty body" if not response.content else f"{declared} body, not an image"
            raise UnexpectedShape(self.name, shape)
        return ProviderImage(response.content, content_type, self.price_usd)


def _validation_text(response: httpx.Response) -> str:
    """The fields FastAPI's 422 names and why ("width: Input should be a multiple of 64").

    Only each error's location and message: its `input` echoes the body back.
    """
    try:
        errors = response.json().get("detail")
    except (ValueError, AttributeError):
        errors = None
    if not isinstance(errors, list) or not errors:
        return "invalid body"
    parts = []
    for error in errors:
        if not isinstance(error, dict):
            continue
        loc = [str(part) for part in error.get("loc", []) if part != "body"]
        parts.append(f"{'.'.join(loc) or 'body'}: {error.get('msg', 'invalid')}")
    text = "; ".join(parts) or "invalid body"
    return text if len(text) <= 200 else text[:197] + "..."


def _from_front_door(response: httpx.Response) -> bool:
    """Modal's HTTP proxy prefixes its own errors `modal-http:`; those ran no function."""
    return response.text.lstrip().startswith("modal-http:")


class ModalSettings(BaseSettings):
    """The Modal SDXL LoRA web endpoint and its proxy-auth token pair."""

    modal_sdxl_endpoint: str | None = Field(None, validation_alias="MODAL_SDXL_ENDPOINT")
    modal_token_id: SecretStr | None = Field(None, validation_alias="MODAL_TOKEN_ID")
    modal_token_secret: SecretStr | None = Field(None, validation_alias="MODAL_TOKEN_SECRET")


def _plain(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


def _build(settings: ModalSettings, tuning: Tuning) -> ModalSDXLProvider:
    assert settings.modal_sdxl_endpoint
    return ModalSDXLProvider(
        settings.modal_sdxl_endpoint,
        token_id=_plain(settings.modal_token_id),
        token_secret=_plain(settings.modal_token_secret),
        price_usd=tuning.price_usd,
        timeout=tuning.timeout,
    )


async def find_job(settings: ModalSettings, row: OpenRow) -> JobAnswer:
    """A dead run's call: its result URL (404: no such call; a 303, a 200 or an answer
    still pending: the call exists). Without a call id Modal cannot be asked."""
    endpoint = settings.modal_sdxl_endpoint
    if not row.job_id or not endpoint:
        return CANNOT_TELL
    headers = {
        "Modal-Key": _plain(settings.modal_token_id) or "",
        "Modal-Secret": _plain(settings.modal_token_secret) or "",
    }
    params = None if row.job_id.startswith("http") else {CALL_ID: row.job_id}
    url = row.job_id if params is None else endpoint
    async with httpx.AsyncClient(headers=headers, timeout=LOOKUP_TIMEOUT) as client:
        try:
            answer = await client.get(url, params=params, follow_redirects=False)
        except httpx.ReadTimeout:
            return JobAnswer(True, row.job_id)  # still running: the call exists
    if answer.status_code == 404:
        return JobAnswer(False)
    if answer.status_code < 400:
        return JobAnswer(True, row.job_id)
    answer.raise_for_status()
    return CANNOT_TELL


ENTRY = ProviderEntry(
    name="modal",
    settings=ModalSettings,
    tuning=Tuning(
        max_concurrent=3, max_attempts=3, backoff_factor=1.5, timeout=300.0, price_usd=0.01
    ),
    price_source='spec "Modal ... $0.01/image"',
    configured=lambda settings: bool(settings.modal_sdxl_endpoint),
    build=_build,
    secret_fields=("modal_token_id", "modal_token_secret"),
    quality_rank=0,
    credentials_block=CredentialsBlock(
        type_name="Studio Modal Credentials",
        class_name="ModalCredentials",
        description="Modal SDXL: the web endpoint and the proxy-auth token pair sent to it "
        "(and only to it).",
        url=BlockField(
            "endpoint", "MODAL_SDXL_ENDPOINT", "the deployed web endpoint's URL", required=True
        ),
        keys=(
            BlockField("token_id", "MODAL_TOKEN_ID", "proxy auth Modal-Key", secret=True),
            BlockField(
                "token_secret", "MODAL_TOKEN_SECRET", "proxy auth Modal-Secret", secret=True
            ),
        ),
    ),
    find_job=find_job,
)
