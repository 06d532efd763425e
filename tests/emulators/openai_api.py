"""Loopback emulator of OpenAI's moderation endpoint (POST /v1/moderations).

The official `openai` client reaches it with `base_url=f"{emulator.url}/v1"`. It answers
the real shape: `{"id", "model", "results": [{"flagged", "categories",
"category_scores", "category_applied_input_types"}]}` with all thirteen categories,
one result per string for a list of strings and one result for a multimodal list,
which (like the real endpoint) may hold at most one image.

Scripted flags: `text_flags[marker] = [categories]` flags any text input containing
`marker`; `image_flags[marker] = [categories]` flags an image whose bytes (decoded from
its data URL) or URL contain `marker`, and `image_errors[marker] = status` fails it.
Switches: `fail_next(*statuses)`, `fail_always`, `miscount_next(*deltas)` (the next
successful answers carry that many results more, or fewer, than inputs: a
malformed but well-formed reply), `miscount_always`, `image_miscount[marker] = delta`
(the same for a matching image only),
the shared `Behaviour` (latency, 429 throttling with retry-after, hang), an API key
check, and counters `moderations.text` / `moderations.image` with an in-flight peak.
`legacy_shape` answers as the older text-moderation models do: no
`category_applied_input_types`, and `illicit`/`illicit/violent` null. The endpoint is
free, so `billed_jobs` stays 0 (see tests/emulators/README.md).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import threading
from collections import deque
from typing import Any

from aiohttp import web

from tests.emulators.base import Behaviour, Emulator

CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)
IMAGE_CATEGORIES = frozenset({
    "self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "violence",
    "violence/graphic",
})
ERROR_CODES = {400: "invalid_request_error", 401: "invalid_api_key", 429: "rate_limit_exceeded",
               500: "server_error", 503: "server_error"}


class OpenAIModerationEmulator(Emulator):
    def __init__(self, behaviour: Behaviour | None = None, *, api_key: str | None = None):
        super().__init__(behaviour)
        self.api_key = api_key
        self.text_flags: dict[str, list[str]] = {}
        self.image_flags: dict[str, list[str]] = {}
        self.image_errors: dict[str, int] = {}
        self.errors_next: deque[int] = deque()
        self.fail_always: int | None = None
        self.miscounts: deque[int] = deque()
        self.miscount_always: int | None = None
        self.image_miscount: dict[str, int] = {}
        self.legacy_shape = False
        self.requests: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def fail_next(self, *statuses: int) -> None:
        self.errors_next.extend(statuses)

    def miscount_next(self, *deltas: int) -> None:
        """The next answers hold `delta` results more (or fewer) than inputs."""
        self.miscounts.extend(deltas)

    def _miscount(self, results: list[dict[str, Any]], urls: list[str]) -> list[dict[str, Any]]:
        delta = self.miscounts.popleft() if self.miscounts else self.miscount_always
        for marker, shift in self.image_miscount.items():
            if any(self._matches(marker, url) for url in urls):
                delta = shift
        if not delta:
            return results
        if delta < 0:
            return results[:delta]
        return results + [results[-1]] * delta

    def _error(self, status: int, message: str, retry_after: float | None = None) -> web.Response:
        headers = {"x-request-id": f"req_emu_{next(self._ids)}"}
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        body = {"error": {"message": message, "type": ERROR_CODES.get(status, "server_error"),
                          "param": None, "code": ERROR_CODES.get(status)}}
        return web.json_response(body, status=status, headers=headers)

    @staticmethod
    def _result(flags: set[str], kinds: set[str]) -> dict[str, Any]:
        applied = {
            c: sorted(k for k in kinds if k == "text" or c in IMAGE_CATEGORIES)
            for c in CATEGORIES
        }
        return {
            "flagged": bool(flags),
            "categories": {c: c in flags for c in CATEGORIES},
            "category_scores": {c: (0.97 if c in flags else 0.0012) for c in CATEGORIES},
            "category_applied_input_types": applied,
        }

    @staticmethod
    def _legacy(result: dict[str, Any]) -> dict[str, Any]:
        """The text-moderation-00x shape: no applied input types, no illicit scores."""
        legacy = {k: v for k, v in result.items() if k != "category_applied_input_types"}
        for key in ("categories", "category_scores"):
            legacy[key] = {
                c: (None if c.startswith("illicit") else v) for c, v in result[key].items()
            }
        return legacy

    def _text_flags(self, text: str) -> set[str]:
        return {c for marker, cats in self.text_flags.items() if marker in text for c in cats}

    @staticmethod
    def _matches(marker: str, url: str) -> bool:
        payload = url.encode()
        if url.startswith("data:") and "," in url:
            try:
                payload = base64.b64decode(url.split(",", 1)[1])
            except ValueError:
                payload = b""
        return marker.encode() in payload

    def _image_flags(self, url: str) -> set[str]:
        return {
            c for marker, cats in self.image_flags.items() if self._matches(marker, url)
            for c in cats
        }

    def _authorised(self, request: web.Request) -> bool:
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return self.api_key is None or bearer == self.api_key

    async def moderations(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            self.counters.hit("moderations.unauthorised")
            return self._error(401, "Incorrect API key provided.")
        body = await request.json()
        raw = body.get("input")
        items = raw if isinstance(raw, list) else [raw]
        multimodal = any(isinstance(i, dict) for i in items)
        images = [i for i in items if isinstance(i, dict) and i.get("type") == "image_url"]
        self.counters.hit("moderations.image" if images else "moderations.text")
        with self._lock:
            self.requests.append(body)
        async with self.counters.generating():
            if self.errors_next:
                status = self.errors_next.popleft()
                retry = self.behaviour.retry_after if status == 429 else None
                return self._error(status, "emulated failure", retry)
            if self.fail_always is not None:
                return self._error(self.fail_always, "emulated outage")
            if self.behaviour.draw_throttle():
                return self._error(429, "Rate limit reached", self.behaviour.retry_after)
            for marker, status in self.image_errors.items():
                if any(self._matches(marker, str(i["image_url"]["url"])) for i in images):
                    return self._error(status, "emulated image failure")
            if len(images) > 1:
                return self._error(400, "Only one image input is supported per request.")
            latency, failed = self.behaviour.draw()
            await self.behaviour.wait_while_hung()
            if latency:
                await asyncio.sleep(latency)
            if failed:
                return self._error(500, "The server had an error processing your request.")
            if multimodal:
                flags: set[str] = set()
                kinds: set[str] = set()
                for item in items:
                    if item.get("type") == "text":
                        flags |= self._text_flags(str(item.get("text", "")))
                        kinds.add("text")
                    elif item.get("type") == "image_url":
                        flags |= self._image_flags(str(item["image_url"]["url"]))
                        kinds.add("image")
                results = [self._result(flags, kinds)]
            else:
                results = [self._result(self._text_flags(str(t)), {"text"}) for t in items]
            results = self._miscount(results, [str(i["image_url"]["url"]) for i in images])
            if self.legacy_shape:
                results = [self._legacy(r) for r in results]
        return web.json_response({
            "id": f"modr-emu-{next(self._ids)}",
            "model": body.get("model") or "omni-moderation-latest",
            "results": results,
        })

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/moderations", self.moderations)
        app.router.add_get("/v1/models", self.models)
        return app

    async def models(self, request: web.Request) -> web.Response:
        """GET /v1/models: the cheapest authenticated read (the health probe's)."""
        self.counters.hit("models")
        if not self._authorised(request):
            return web.json_response(
                {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                           "code": "invalid_api_key"}},
                status=401,
            )
        return web.json_response({"object": "list", "data": [
            {"id": "omni-moderation-latest", "object": "model", "owned_by": "system"}
        ]})
