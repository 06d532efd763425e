"""A loopback Replicate HTTP API (v1) for the official `replicate` client.

- POST /v1/models/{owner}/{name}/predictions and POST /v1/predictions {"version", "input"}
    201 prediction JSON; with `Prefer: wait[=n]` the answer is held until the prediction
    finishes or n seconds (60 by default) pass, as the real API does
    401/404/422/429 as RFC 7807 problem details {"title", "detail", "status"};
    429 carries `Retry-After` (seconds)
- GET /v1/predictions/{id}: prediction JSON {id, model, version, input, output, error,
  status: starting|processing|succeeded|failed|canceled, logs, metrics, urls, ...}
- POST /v1/predictions/{id}/cancel
- GET /files/{id}/out-0.png: the output file (replicate.delivery stand-in)

Switches: latency, failure_rate (status "failed"), throttle_rate / throttle_next with
retry_after (429 on create), hang (stays "processing").
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import re
import secrets
from typing import Any

from aiohttp import web

from tests.emulators.base import Behaviour, Emulator, png_bytes

TERMINAL = {"succeeded", "failed", "canceled"}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def _problem(status: int, title: str, detail: str, **headers: str) -> web.Response:
    return web.json_response(
        {"title": title, "detail": detail, "status": status}, status=status, headers=headers
    )


class ReplicateEmulator(Emulator):
    def __init__(
        self,
        behaviour: Behaviour | None = None,
        *,
        token: str | None = None,
        models: tuple[str, ...] = ("black-forest-labs/flux-dev-lora",),
        image_size: int = 64,
    ) -> None:
        super().__init__(behaviour)
        self.token = token
        self.models = set(models)
        self.image_size = image_size
        self.predictions: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._done: dict[str, asyncio.Event] = {}
        #: one (key, latency, failed) per generation; key = the input's seed
        self.records: list[tuple[str, float, bool]] = []

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/models/{owner}/{name}/predictions", self._create_for_model)
        app.router.add_post("/v1/predictions", self._create_for_version)
        app.router.add_get("/v1/predictions/{id}", self._get)
        app.router.add_post("/v1/predictions/{id}/cancel", self._cancel)
        app.router.add_get("/files/{id}/{filename}", self._file)
        return app

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if self.token is None:
            return None
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        return None

    async def _create_for_model(self, request: web.Request) -> web.Response:
        model = f"{request.match_info['owner']}/{request.match_info['name']}"
        if model not in self.models:
            self.counters.hit("create")
            return _problem(404, "Not found", "The requested resource could not be found.")
        return await self._create(request, model, version="dp-" + secrets.token_hex(16))

    async def _create_for_version(self, request: web.Request) -> web.Response:
        return await self._create(request, model=next(iter(self.models)), version=None)

    async def _create(self, request: web.Request, model: str, version: str | None) -> web.Response:
        self.counters.hit("create")
        if (error := self._auth_error(request)) is not None:
            return error
        if self.behaviour.draw_throttle():
            self.counters.hit("throttled")
            after = self.behaviour.retry_after
            return _problem(
                429,
                "Request was throttled",
                f"Request was throttled. Your rate limit resets in ~{math.ceil(after)}s.",
                **{"Retry-After": f"{after:g}"},
            )
        try:
            body = await request.json()
        except ValueError:
            return _problem(400, "Bad request", "Request body is not valid JSON")
        version = version or body.get("version")
        inputs = body.get("input") or {}
        if not version or not isinstance(inputs, dict) or not inputs.get("prompt"):
            return _problem(422, "Input validation failed", "- input: prompt is required")
        pid = secrets.token_hex(13)[:26]
        base = str(request.url.origin())
        prediction: dict[str, Any] = {
            "id": pid,
            "model": model,
            "version": version,
            "input": inputs,
            "logs": "",
            "output": None,
            "data_removed": False,
            "error": None,
            "status": "starting",
            "created_at": _now(),
            "started_at": None,
            "completed_at": None,
            "metrics": {},
            "urls": {
                "cancel": f"{base}/v1/predictions/{pid}/cancel",
                "get": f"{base}/v1/predictions/{pid}",
                "web": f"https://replicate.com/p/{pid}",
            },
        }
        self.predictions[pid] = prediction
        self._done[pid] = asyncio.Event()
        self._tasks[pid] = asyncio.create_task(self._run(pid, base))
        wait = self._prefer_wait(request.headers.get("Prefer", ""))
        if wait:
            try:
                await asyncio.wait_for(self._done[pid].wait(), timeout=wait)
            except TimeoutError:
                pass
        return web.json_response(prediction, status=201)

    @staticmethod
    def _prefer_wait(header: str) -> float:
        match = re.search(r"\bwait(?:=(\d+))?\b", header)
        if not match:
            return 0.0
        return float(match.group(1) or 60)

    async def _run(self, pid: str, base: str) -> None:
        prediction = self.predictions[pid]
        latency, fail = self.behaviour.draw()
        self.records.append((str(prediction["input"].get("seed", "")), latency, fail))
        try:
            async with self.counters.generating():
                prediction["status"] = "processing"
                prediction["started_at"] = _now()
                await self.behaviour.wait_while_hung()
                await asyncio.sleep(latency)
        except asyncio.CancelledError:
            prediction["status"] = "canceled"
        else:
            if fail:
                self.counters.hit("failed")
                prediction["status"] = "failed"
                prediction["error"] = "Prediction failed: the model raised an error"
            else:
                self.counters.hit("succeeded")
                self.files[pid] = png_bytes(f"replicate-{pid}", self.image_size)
                prediction["status"] = "succeeded"
                prediction["output"] = [f"{base}/files/{pid}/out-0.png"]
                prediction["metrics"] = {"predict_time": latency}
        prediction["completed_at"] = _now()
        self._done[pid].set()
        self._tasks.pop(pid, None)

    async def _get(self, request: web.Request) -> web.Response:
        self.counters.hit("get")
        if (error := self._auth_error(request)) is not None:
            return error
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        return web.json_response(prediction)

    async def _cancel(self, request: web.Request) -> web.Response:
        self.counters.hit("cancel")
        if (error := self._auth_error(request)) is not None:
            return error
        pid = request.match_info["id"]
        prediction = self.predictions.get(pid)
        if prediction is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        task = self._tasks.get(pid)
        if task is not None:
            task.cancel()
            await self._done[pid].wait()
        return web.json_response(prediction)

    async def _file(self, request: web.Request) -> web.Response:
        self.counters.hit("file")
        data = self.files.get(request.match_info["id"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="image/png")
