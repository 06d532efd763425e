"""Loopback emulator of Anthropic's Messages API and Message Batches API.

It speaks the real shapes, so the official `anthropic` client is pointed at it with
`base_url=emulator.url`:
- POST /v1/messages -> a `message` with `usage` including `cache_creation_input_tokens`
  and `cache_read_input_tokens` (prompt caching is emulated: the prefix up to the last
  block marked `cache_control` is written on first use, once the response is done, and
  read afterwards when it has at least `min_cacheable_tokens`; tokens are estimated at
  four characters each);
- POST /v1/messages/batches, GET .../{id}, POST .../{id}/cancel, GET .../{id}/results
  (JSONL, one `{"custom_id", "result"}` line per request: succeeded, errored (ids in
  `batch_errored`), expired (ids in `batch_expired`) or canceled); each request finishes
  `batch_processing_seconds` after creation, except those in `batch_slow` (custom ids),
  or all with `batch_never_ends`; the batch ends when every request has. A cancel ends
  it at once: finished requests keep their results, the others are `canceled`.
  `cancel_fails = status` makes the cancel endpoint answer that error;
- errors as `{"type": "error", "error": {"type", "message"}}` with the real statuses:
  429 rate_limit_error (with `retry-after`), 529 overloaded_error, 500 api_error, 401.

Default responder convention: it finds every `piece_id: <id>` (or `"piece_id": "<id>"`)
in the last user message and answers `{"hooks": [{"piece_id", "text"}, ...]}` with one
neutral hook per id. `hook_overrides[id]` replaces a text (None omits the id), and
`malformed` switches the whole answer to a broken form ("fenced", "prose", "truncated",
"garbage", "missing_half", "empty_text", "wrong_types").

`stop_reason_next` (a deque) makes the next answers end with a documented stop_reason
other than end_turn, each in its documented shape: "max_tokens" (the text cut at
`max_tokens`, here 60 % of it), "stop_sequence" (`stop_sequence` set to the matched
"\n\n###"), "tool_use" (a `tool_use` block after the text), "pause_turn" (an
unfinished turn: the text so far), "refusal" (a partial text that must not be used) and
"model_context_window_exceeded" (cut like max_tokens). `billed_jobs` counts answered
messages (Anthropic bills the tokens of every answer, whatever its stop_reason).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re
import threading
import time
from collections import deque
from typing import Any

from aiohttp import web

from tests.emulators.base import Behaviour, Emulator

PIECE_ID = re.compile(r"""["']?piece_id["']?\s*[:=]\s*["']?([A-Za-z0-9_.:\-]+)""")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    529: "overloaded_error",
}


def estimate_tokens(text: str) -> int:
    return max(1, -(-len(text) // 4)) if text else 0


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [b for b in content or [] if isinstance(b, dict)]


class AnthropicEmulator(Emulator):
    def __init__(self, behaviour: Behaviour | None = None, *, api_key: str | None = None):
        super().__init__(behaviour)
        self.api_key = api_key
        self.errors_next: deque[int] = deque()
        self.fail_always: int | None = None
        self.malformed: str | None = None
        self.hook_overrides: dict[str, str | None] = {}
        self.min_cacheable_tokens = 1024
        self.batch_processing_seconds = 0.0
        self.batch_never_ends = False
        self.batch_errored: set[str] = set()
        self.batch_expired: set[str] = set()
        self.batch_slow: set[str] = set()
        self.cancel_fails: int | None = None
        self.stop_reason_next: deque[str] = deque()
        self.requests: list[dict[str, Any]] = []
        self.batches: dict[str, dict[str, Any]] = {}
        self._cache: set[str] = set()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # ---- switches -------------------------------------------------------------------
    def fail_next(self, *statuses: int) -> None:
        """The next requests to /v1/messages answer these statuses, in order."""
        self.errors_next.extend(statuses)

    def clear_cache(self) -> None:
        self._cache.clear()

    # ---- shapes ---------------------------------------------------------------------
    def _error(self, status: int, message: str, retry_after: float | None = None) -> web.Response:
        headers = {"request-id": f"req_emu_{next(self._ids)}"}
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        body = {
            "type": "error",
            "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
            "request_id": headers["request-id"],
        }
        return web.json_response(body, status=status, headers=headers)

    def _usage(self, params: dict[str, Any]) -> tuple[dict[str, int], str | None]:
        items: list[dict[str, Any]] = list(_blocks(params.get("system")))
        for message in params.get("messages", []):
            items.extend(_blocks(message.get("content")))
        tokens = [estimate_tokens(str(b.get("text", ""))) for b in items]
        marked = [i for i, b in enumerate(items) if b.get("cache_control")]
        total = sum(tokens)
        usage = {"input_tokens": total, "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0}
        if not marked:
            return usage, None
        end = marked[-1] + 1
        prefix_tokens = sum(tokens[:end])
        if prefix_tokens < self.min_cacheable_tokens:
            return usage, None
        stripped = [{k: v for k, v in b.items() if k != "cache_control"} for b in items[:end]]
        key = hashlib.sha256(
            json.dumps([params.get("model"), stripped], sort_keys=True).encode()
        ).hexdigest()
        usage["input_tokens"] = total - prefix_tokens
        with self._lock:
            hit = key in self._cache
        usage["cache_read_input_tokens" if hit else "cache_creation_input_tokens"] = prefix_tokens
        return usage, (None if hit else key)

    def _answer_text(self, params: dict[str, Any]) -> str:
        messages = params.get("messages") or [{}]
        last = " ".join(str(b.get("text", "")) for b in _blocks(messages[-1].get("content")))
        ids = list(dict.fromkeys(PIECE_ID.findall(last)))
        hooks: list[dict[str, Any]] = []
        for n, pid in enumerate(ids, start=1):
            text = self.hook_overrides.get(pid, f"Fresh look, new energy, shot {n} of the set.")
            if pid in self.hook_overrides and text is None:
                continue
            hooks.append({"piece_id": pid, "text": text})
        mode = self.malformed
        if mode == "missing_half":
            hooks = hooks[: len(hooks) // 2]
        elif mode == "empty_text":
            hooks = [{**h, "text": ""} for h in hooks]
        elif mode == "wrong_types":
            hooks = [{"piece_id": h["piece_id"], "text": 42} for h in hooks]
        body = json.dumps({"hooks": hooks})
        if mode == "fenced":
            return f"```json\n{body}\n```"
        if mode == "prose":
            return f"Here are your hooks:\n{body[:-1]},]}}\nHope these help!"
        if mode == "truncated":
            return body[: int(len(body) * 0.6)]
        if mode == "garbage":
            return "I'm sorry, I can only describe the pictures in general terms."
        return body

    def _message(
        self, params: dict[str, Any], service_tier: str
    ) -> tuple[dict[str, Any], str | None]:
        usage, new_key = self._usage(params)
        text = self._answer_text(params)
        with self._lock:
            stop_reason = self.stop_reason_next.popleft() if self.stop_reason_next else "end_turn"
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        stop_sequence = None
        if stop_reason in ("max_tokens", "model_context_window_exceeded"):
            content = [{"type": "text", "text": text[: int(len(text) * 0.6)]}]
        elif stop_reason == "stop_sequence":
            stop_sequence = "\n\n###"
        elif stop_reason == "tool_use":
            content.append({"type": "tool_use", "id": f"toolu_emu_{next(self._ids):06d}",
                            "name": "lookup_template", "input": {"template_id": "t-1"}})
        elif stop_reason == "pause_turn":
            content = [{"type": "text", "text": text[: int(len(text) * 0.8)]}]
        elif stop_reason == "refusal":
            content = [{"type": "text", "text": text[: int(len(text) * 0.5)]}]
        usage["output_tokens"] = estimate_tokens(
            "".join(str(b.get("text", "")) for b in content)
        )
        self.bill()
        message = {
            "id": f"msg_emu_{next(self._ids):06d}",
            "type": "message",
            "role": "assistant",
            "model": params.get("model", "claude-emulated"),
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": {**usage, "service_tier": service_tier},
        }
        return message, new_key

    def _remember(self, key: str | None) -> None:
        if key:
            with self._lock:
                self._cache.add(key)

    def _authorised(self, request: web.Request) -> bool:
        """The key arrives as `x-api-key` or, from newer SDKs, `Authorization: Bearer`."""
        if self.api_key is None:
            return True
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        return self.api_key in (request.headers.get("x-api-key"), bearer)

    # ---- handlers -------------------------------------------------------------------
    async def messages(self, request: web.Request) -> web.Response:
        self.counters.hit("messages")
        if not self._authorised(request):
            return self._error(401, "invalid x-api-key")
        params = await request.json()
        with self._lock:
            self.requests.append(params)
        async with self.counters.generating():
            if self.errors_next:
                status = self.errors_next.popleft()
                retry = self.behaviour.retry_after if status in (429, 529) else None
                return self._error(status, "emulated failure", retry)
            if self.fail_always is not None:
                return self._error(self.fail_always, "emulated outage")
            if self.behaviour.draw_throttle():
                return self._error(429, "rate limited", self.behaviour.retry_after)
            latency, failed = self.behaviour.draw()
            await self.behaviour.wait_while_hung()
            if latency:
                await asyncio.sleep(latency)
            if failed:
                return self._error(500, "emulated internal error")
            message, new_key = self._message(params, "standard")
            self._remember(new_key)
            return web.json_response(message, headers={"request-id": f"req_{message['id']}"})

    def _finished(self, batch: dict[str, Any], custom_id: str) -> bool:
        if self.batch_never_ends or custom_id in self.batch_slow:
            return False
        return time.time() - batch["created"] >= self.batch_processing_seconds

    def _batch_view(self, batch: dict[str, Any], base: str) -> dict[str, Any]:
        ids = [r["custom_id"] for r in batch["requests"]]
        if batch["canceled"] is None:
            finished = [i for i in ids if self._finished(batch, i)]
        else:
            finished = [i for i in ids if i in batch["canceled"]]
        ended = batch["canceled"] is not None or len(finished) == len(ids)
        expired = sum(1 for i in finished if i in self.batch_expired)
        errored = sum(
            1 for i in finished if i in self.batch_errored and i not in self.batch_expired
        )
        counts = {
            "processing": 0 if ended else len(ids) - len(finished),
            "succeeded": len(finished) - errored - expired if ended else 0,
            "errored": errored if ended else 0,
            "canceled": len(ids) - len(finished) if ended else 0,
            "expired": expired if ended else 0,
        }
        created = batch["created"]
        iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created + 86400))
        return {
            "id": batch["id"],
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": counts,
            "created_at": iso,
            "expires_at": expires,
            "ended_at": iso if ended else None,
            "cancel_initiated_at": iso if batch["canceled"] is not None else None,
            "archived_at": None,
            "results_url": f"{base}/v1/messages/batches/{batch['id']}/results" if ended else None,
        }

    async def batch_create(self, request: web.Request) -> web.Response:
        self.counters.hit("batches.create")
        if not self._authorised(request):
            return self._error(401, "invalid x-api-key")
        if self.errors_next:
            status = self.errors_next.popleft()
            return self._error(status, "emulated failure", self.behaviour.retry_after)
        body = await request.json()
        batch_id = f"msgbatch_emu_{next(self._ids):06d}"
        # "canceled": None while running, else the custom ids finished before the cancel
        batch = {"id": batch_id, "requests": body["requests"], "created": time.time(),
                 "canceled": None}
        with self._lock:
            self.batches[batch_id] = batch
        return web.json_response(self._batch_view(batch, self.url))

    def _find(self, request: web.Request) -> dict[str, Any] | None:
        return self.batches.get(request.match_info["batch_id"])

    async def batch_retrieve(self, request: web.Request) -> web.Response:
        self.counters.hit("batches.retrieve")
        batch = self._find(request)
        if batch is None:
            return self._error(404, "batch not found")
        return web.json_response(self._batch_view(batch, self.url))

    async def batch_cancel(self, request: web.Request) -> web.Response:
        self.counters.hit("batches.cancel")
        batch = self._find(request)
        if batch is None:
            return self._error(404, "batch not found")
        if self.cancel_fails is not None:
            return self._error(self.cancel_fails, "emulated cancel failure")
        if batch["canceled"] is None:
            batch["canceled"] = {
                r["custom_id"] for r in batch["requests"] if self._finished(batch, r["custom_id"])
            }
        return web.json_response(self._batch_view(batch, self.url))

    async def batch_results(self, request: web.Request) -> web.Response:
        self.counters.hit("batches.results")
        batch = self._find(request)
        if batch is None or self._batch_view(batch, self.url)["processing_status"] != "ended":
            return self._error(404, "results not available")
        lines = []
        for entry in batch["requests"]:
            custom_id = entry["custom_id"]
            if batch["canceled"] is not None and custom_id not in batch["canceled"]:
                result: dict[str, Any] = {"type": "canceled"}
            elif custom_id in self.batch_expired:
                result = {"type": "expired"}
            elif custom_id in self.batch_errored:
                result = {"type": "errored", "error": {"type": "error", "error": {
                    "type": "api_error", "message": "emulated request error"}}}
            else:
                answered = batch.setdefault("answers", {})
                if custom_id not in answered:  # billed once, however often results are read
                    message, new_key = self._message(entry["params"], "batch")
                    self._remember(new_key)
                    answered[custom_id] = message
                result = {"type": "succeeded", "message": answered[custom_id]}
            lines.append(json.dumps({"custom_id": custom_id, "result": result}))
        return web.Response(
            body=("\n".join(lines) + "\n").encode(), content_type="application/binary"
        )

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/batches", self.batch_create)
        app.router.add_get("/v1/messages/batches/{batch_id}", self.batch_retrieve)
        app.router.add_post("/v1/messages/batches/{batch_id}/cancel", self.batch_cancel)
        app.router.add_get("/v1/messages/batches/{batch_id}/results", self.batch_results)
        app.router.add_get("/v1/models", self.models)
        return app

    async def models(self, request: web.Request) -> web.Response:
        """GET /v1/models: the cheapest authenticated read (the health probe's)."""
        self.counters.hit("models")
        if not self._authorised(request):
            return self._error(401, "invalid x-api-key")
        model = {"type": "model", "id": "claude-haiku-4-5", "display_name": "Claude Haiku 4.5"}
        return web.json_response({"data": [model], "has_more": False})
