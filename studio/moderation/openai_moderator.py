"""Moderation through OpenAI's moderation endpoint with the official `openai` client.

The endpoint scores a list of strings in one request but takes one image per request,
so the texts of a batch go out together (chunks of MODERATION_TEXT_BATCH_SIZE) and the
images go out one request each, concurrently under MODERATION_MAX_CONCURRENT. Each
image is sent as a data URL of the staged PNG. Transient errors, and answers
with a different number of results than inputs, are retried with backoff honouring
retry-after; when the texts cannot be scored the whole call raises
`ModerationUnavailable`, and a piece whose image cannot be scored is left out of the
answer, so the policy holds those pieces for review instead of passing them unchecked.

Every answered call is written to the cost ledger (`ledger`) with the pieces it scored:
at $0, what OpenAI bills for the endpoint, with the spec's per-call figure as estimate;
the step's calls go in one statement when `score` ends.

The client is pinned to the base URL's origin (studio/providers/same_origin.py): the SDK
follows redirects, and neither the key nor a premium image goes to another origin.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import mimetypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI, DefaultAsyncHttpxClient

from studio.hooks.retrying import call_with_retries, status_of
from studio.ledger.calls import ModerationCalls
from studio.ledger.store import CostLedger
from studio.moderation.base import ModerationItem, ModerationScores
from studio.moderation.settings import ModerationSettings
from studio.providers.same_origin import pin_origin

logger = logging.getLogger("studio.moderation")


class ModerationUnavailable(RuntimeError):
    """The moderation service could not score the pieces, even after retries."""


class ResultCountMismatch(RuntimeError):
    """The endpoint answered a different number of results than inputs sent.

    Results are matched to inputs by position, so a short or long answer cannot be
    attributed to pieces: it is retried like a transient error and, if it persists,
    the pieces are left unscored (held for review), never passed unchecked.
    """

    transient = True


def describe_error(exc: BaseException) -> str:
    """Type and status, then the API's error `code` and the `x-request-id`; never its message
    (it can quote the input)."""
    status = status_of(exc)
    if not status:
        return type(exc).__name__
    parts = [str(p) for p in (getattr(exc, "code", None),) if isinstance(p, str) and p]
    request_id = getattr(exc, "request_id", None)
    if isinstance(request_id, str) and request_id:
        parts.append(f"request {request_id}")
    extra = f" [{', '.join(parts)}]" if parts else ""
    return f"{type(exc).__name__} (HTTP {status}){extra}"


def data_url(path: str) -> str:
    mime = mimetypes.guess_type(path)[0] or "image/png"
    encoded = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:{mime};base64,{encoded}"


def _flags(result: Any) -> tuple[list[str], dict[str, float]]:
    """Category names as the API spells them (e.g. 'sexual/minors'), from aliases."""
    categories = result.categories.model_dump(by_alias=True)
    scores = result.category_scores.model_dump(by_alias=True)
    flagged = sorted(name for name, on in categories.items() if on)
    return flagged, {name: float(v) for name, v in scores.items() if v is not None}


class OpenAIModerator:
    name = "openai"
    stand_in = False

    def __init__(self, settings: ModerationSettings, ledger: CostLedger | None = None) -> None:
        if not settings.configured:
            raise ValueError("OpenAIModerator needs OPENAI_API_KEY")
        self.settings = settings
        self.calls = 0
        #: where answered calls are recorded (None: not recorded, e.g. a tool)
        self.ledger = ledger
        self._answered: ModerationCalls | None = None

    @property
    def cost_usd(self) -> float:
        return self.calls * self.settings.price_per_call_usd

    def _client(self) -> AsyncOpenAI:
        key = self.settings.openai_api_key
        assert key is not None
        base_url = self.settings.api_base_url
        return AsyncOpenAI(
            api_key=key.get_secret_value(),
            base_url=base_url,
            max_retries=0,
            timeout=self.settings.timeout_seconds,
            # the SDK follows redirects; the key (and the images) go to this origin only
            http_client=DefaultAsyncHttpxClient(event_hooks={"request": [pin_origin(base_url)]}),
        )

    async def _create(
        self, client: AsyncOpenAI, payload: Any, what: str, expected: int,
        pieces: Sequence[str] = (),
    ) -> Any:
        async def attempt() -> Any:
            self.calls += 1
            response = await client.moderations.create(model=self.settings.model, input=payload)
            if self._answered is not None:
                self._answered.add(pieces, job_id=getattr(response, "id", None))
            if len(response.results) != expected:
                raise ResultCountMismatch(f"{len(response.results)} results for {expected}")
            return response

        def on_retry(exc: BaseException, number: int) -> None:
            logger.info(
                "Moderation retry | Error: %s | Input: %s | Attempt: %d",
                describe_error(exc), what, number,
            )

        return await call_with_retries(
            attempt,
            retries=self.settings.max_retries,
            backoff_base=self.settings.backoff_base_seconds,
            backoff_max=self.settings.backoff_max_seconds,
            on_retry=on_retry,
        )

    async def _texts(
        self, client: AsyncOpenAI, gate: asyncio.Semaphore, items: Sequence[ModerationItem]
    ) -> dict[str, ModerationScores]:
        scored: dict[str, ModerationScores] = {}
        size = self.settings.text_batch_size
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            try:
                async with gate:
                    response = await self._create(
                        client, [i.text for i in chunk], "text", len(chunk),
                        [i.piece_id for i in chunk],
                    )
            except Exception as exc:
                logger.error(
                    "Moderation unavailable | Error: %s | Input: text | Pieces: %d",
                    describe_error(exc), len(items),
                )
                raise ModerationUnavailable(
                    f"text moderation failed: {describe_error(exc)}"
                ) from None
            for item, result in zip(chunk, response.results, strict=True):
                flagged, scores = _flags(result)
                scored[item.piece_id] = ModerationScores(item.piece_id, flagged, scores)
        return scored

    async def _image(
        self, client: AsyncOpenAI, gate: asyncio.Semaphore, item: ModerationItem
    ) -> ModerationScores | None:
        assert item.image_path is not None
        async with gate:
            try:
                payload = [{"type": "image_url", "image_url": {"url": data_url(item.image_path)}}]
                response = await self._create(client, payload, "image", 1, [item.piece_id])
            except Exception as exc:
                logger.warning(
                    "Moderation unavailable | Error: %s | Input: image | Piece: %s",
                    describe_error(exc), item.piece_id,
                )
                return None
        flagged, scores = _flags(response.results[0])
        return ModerationScores(item.piece_id, flagged, scores)

    async def score(self, items: list[ModerationItem]) -> dict[str, ModerationScores]:
        if not items:
            return {}
        gate = asyncio.Semaphore(self.settings.max_concurrent)
        if self.ledger is not None:
            self._answered = ModerationCalls(self.ledger, self.settings.price_per_call_usd)
        try:
            return await self._score(items, gate)
        finally:
            if self._answered is not None:
                await asyncio.shield(self._answered.flush())

    async def _score(
        self, items: list[ModerationItem], gate: asyncio.Semaphore
    ) -> dict[str, ModerationScores]:
        async with self._client() as client:
            with_images = [i for i in items if i.image_path]
            image_task = asyncio.gather(*(self._image(client, gate, i) for i in with_images))
            try:
                texts = await self._texts(client, gate, items)
            except ModerationUnavailable:
                await image_task
                raise
            images = await image_task
        merged = dict(texts)
        for item, image in zip(with_images, images, strict=True):
            if image is None:
                merged.pop(item.piece_id, None)  # unchecked image: held for review
                continue
            own = merged[item.piece_id]
            both = set(own.flagged_categories) | set(image.flagged_categories)
            own.flagged_categories = sorted(both)
            for name, value in image.scores.items():
                own.scores[name] = max(value, own.scores.get(name, 0.0))
        return merged
