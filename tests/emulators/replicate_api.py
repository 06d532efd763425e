"""A loopback Replicate HTTP API (v1) for the official `replicate` client.

- POST /v1/models/{owner}/{name}/predictions and POST /v1/predictions {"version", "input"}
    201 prediction JSON; with `Prefer: wait[=n]` the answer is held until the prediction
    finishes or n seconds (60 by default) pass, as the real API does, so the answer may
    come before the end (status starting/processing, output null) or after it
    401/404/422/429 as RFC 7807 problem details (application/problem+json)
    {"title", "detail", "status"}; 429 carries `Retry-After` (seconds)
- GET /v1/predictions/{id}: prediction JSON {id, model, version, input, output, error,
  status: starting|processing|succeeded|failed|canceled|aborted, logs, metrics, urls, ...}
- POST /v1/predictions/{id}/cancel
- GET /files/{id}/out-0.png: the output file (replicate.delivery stand-in)

Switches (one per documented variant, see tests/emulators/README.md):
- `Behaviour`: latency, failure_rate (status "failed"), throttle_rate / throttle_next with
  retry_after (429 on create), hang (stays "processing");
- `output_form`: "list" (default, `["<url>"]`) or "string" (`"<url>"`);
- `output_scheme`: "http" (a delivery URL served here, default) or "data" (a base64
  `data:image/png;...` URI, what sync mode may answer);
- `sync_wait_cap`: seconds after which a `Prefer: wait` answer is given even though the
  prediction is still running (None: the header's own n);
- `end_next`: statuses ("canceled", "aborted", "failed") the next predictions end with;
- `file_fail_next` / `file_fail_status`: the next output downloads answer that status
  (after the prediction succeeded: a lost download);
- `output_override`: a value used verbatim as the output of succeeded predictions (for
  shapes the documentation does not list: "", [], 42, "not-a-url", {"image": ...});
- `files_before_end`: seconds a prediction stays "processing" after its files are ready;
  the held sync answer comes back at once with status "processing" and `output` set
  ("Replicate will respond with the files as soon as they are all available");
- `remove_data(pid)`: the hour of data retention passed: the prediction answers with
  `output: null`, `data_removed: true`, its file 404s;
- `forget(pid)`: the prediction is gone (404).
- input validation against the model's schema, before a prediction exists (nothing
  billed): an `aspect_ratio` outside `aspect_ratios` (FLUX's enum: 1:1, 16:9, 21:9, 3:2,
  2:3, 4:5, 5:4, 3:4, 4:3, 9:16, 9:21) or a `lora_scale` outside `lora_scale_range`
  (-1 to 3 on black-forest-labs/flux-dev-lora) answers 422 "Input validation failed"
  whose `detail` has one `- input.<field>: <message>` line per bad field and whose
  `invalid_fields` lists `{type, field, description}` (Replicate validates inputs with a
  JSON schema; the messages are its validator's: `input.aspect_ratio must be one of the
  following: "1:1", ...`, `Must be less than or equal to 3`).
- `jobs`: what each prediction was asked for ({id, seed, aspect_ratio, lora_scale}, the
  model's defaults "1:1" and 1 when absent); its image has that ratio (`image_size`
  pixels a side for 1:1).
- GET /v1/predictions: the account's predictions, newest first, `list_page_size` (100)
  a page with a `next` cursor URL (the dead-run lookup searches it).
- `capacity` (int | None, default None): the account's hidden true capacity; a create
  (either path) while that many predictions are in flight answers `capacity_status`
  (429 "Request was throttled", or 503) with `Retry-After: capacity_retry_after`
  (seconds, default 1; None: no header), after validation, before any prediction exists
  (nothing billed). Change it at any time, or `capacity_schedule([(seconds, C), ...])`;
  `flight` (tests/emulators/capacity.py) counts accepted creates, refusals, the peak in
  flight and a timeline of (time.monotonic(), in flight) for a bench.
- `overload_next`: the next creates answer 503 with `Retry-After: behaviour.retry_after`
  (Replicate documents no overload body: ours is the same problem shape).
`billed_jobs` counts created predictions (Replicate bills each one that runs).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import math
import re
import secrets
from collections import deque
from typing import Any

from aiohttp import web

from tests.emulators.base import Behaviour, Emulator
from tests.emulators.capacity import Capacity, CapacitySwitches

TERMINAL = {"succeeded", "failed", "canceled", "aborted"}
_UNSET: Any = object()
#: the `aspect_ratio` enum of black-forest-labs/flux-dev, flux-schnell and flux-dev-lora
FLUX_ASPECT_RATIOS = (
    "1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3", "9:16", "9:21",
)
#: `lora_scale` minimum and maximum on black-forest-labs/flux-dev-lora
FLUX_LORA_SCALE = (-1.0, 3.0)


def _ratio_png(label: str, aspect_ratio: str, size: int) -> bytes:
    """A real PNG with `aspect_ratio` (size x size for 1:1) coloured from `label`."""
    import hashlib
    import io

    from PIL import Image

    try:
        width, height = (float(part) for part in aspect_ratio.split(":"))
        scale = math.sqrt(width / height)
    except (ValueError, ZeroDivisionError):  # e.g. "custom": the model's own size
        scale = 1.0
    digest = hashlib.sha256(label.encode()).digest()
    image = Image.new("RGB", (round(size * scale), round(size / scale)), tuple(digest[:3]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def _problem(status: int, title: str, detail: str, **headers: str) -> web.Response:
    return web.json_response(
        {"title": title, "detail": detail, "status": status}, status=status, headers=headers,
        content_type="application/problem+json",
    )


def _slow_down(status: int, retry_after: float | None) -> web.Response:
    """Replicate's throttling answer: 429 with the documented `detail` ("Request was
    throttled. Your rate limit resets in ~30s.", https://replicate.com/docs/topics/
    predictions/rate-limits) and Retry-After; or 503 (overloaded) in the same shape."""
    headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
    if status == 429:
        detail = "Request was throttled."
        if retry_after is not None:
            detail += f" Your rate limit resets in ~{math.ceil(retry_after)}s."
        return _problem(429, "Request was throttled", detail, **headers)
    return _problem(
        status, "Service Unavailable", "The service is overloaded. Please try again later.",
        **headers,
    )


class ReplicateEmulator(CapacitySwitches, Emulator):
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
        # --- response-variant switches (module docstring) ---
        self.output_form = "list"
        self.output_scheme = "http"
        self.sync_wait_cap: float | None = None
        self.end_next: deque[str] = deque()
        self.file_fail_next = 0
        self.file_fail_status = 500
        self.output_override: Any = _UNSET
        self.files_before_end: float | None = None
        #: predictions per page of GET /v1/predictions
        self.list_page_size = 100
        #: the Authorization header of each file download (None when absent)
        self.file_authorizations: list[str | None] = []
        self._ready: dict[str, asyncio.Event] = {}
        #: the model's input schema: accepted aspect ratios, lora_scale (min, max)
        self.aspect_ratios: tuple[str, ...] = FLUX_ASPECT_RATIOS
        self.lora_scale_range: tuple[float, float] = FLUX_LORA_SCALE
        #: what each prediction was asked for: {id, seed, aspect_ratio, lora_scale}
        self.jobs: list[dict[str, Any]] = []
        #: the hidden true capacity and what it saw (module docstring: `capacity`)
        self.flight = Capacity()
        #: the next creates answer 503 with Retry-After (behaviour.retry_after)
        self.overload_next = 0

    def _invalid_fields(self, inputs: dict[str, Any]) -> list[dict[str, str]]:
        """The schema violations of `inputs` as Replicate lists them (empty: valid)."""
        invalid = []
        if "aspect_ratio" in inputs and inputs["aspect_ratio"] not in self.aspect_ratios:
            allowed = ", ".join(f'"{value}"' for value in self.aspect_ratios)
            invalid.append({
                "type": "enum", "field": "input.aspect_ratio",
                "description": f"input.aspect_ratio must be one of the following: {allowed}",
            })
        if "lora_scale" in inputs:
            value = inputs["lora_scale"]
            low, high = self.lora_scale_range
            if not isinstance(value, int | float) or isinstance(value, bool):
                given = "string" if isinstance(value, str) else type(value).__name__
                invalid.append({
                    "type": "invalid_type", "field": "input.lora_scale",
                    "description": f"Invalid type. Expected: number, given: {given}",
                })
            elif value > high:
                invalid.append({
                    "type": "number_lte", "field": "input.lora_scale",
                    "description": f"Must be less than or equal to {high:g}",
                })
            elif value < low:
                invalid.append({
                    "type": "number_gte", "field": "input.lora_scale",
                    "description": f"Must be greater than or equal to {low:g}",
                })
        return invalid

    def remove_data(self, pid: str) -> None:
        """Replicate's automatic clean-up: inputs, output and files removed, prediction kept."""
        prediction = self.predictions[pid]
        prediction.update({"output": None, "data_removed": True, "logs": ""})
        self.files.pop(pid, None)

    def forget(self, pid: str) -> None:
        """The prediction is gone: GET answers 404, its file too."""
        self.predictions.pop(pid, None)
        self.files.pop(pid, None)

    def _output(self, pid: str, base: str) -> Any:
        if self.output_override is not _UNSET:
            return self.output_override
        if self.output_scheme == "data":
            encoded = base64.b64encode(self.files[pid]).decode("ascii")
            url = f"data:image/png;base64,{encoded}"
        else:
            url = f"{base}/files/{pid}/out-0.png"
        return [url] if self.output_form == "list" else url

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/models/{owner}/{name}/predictions", self._create_for_model)
        app.router.add_post("/v1/predictions", self._create_for_version)
        app.router.add_get("/v1/predictions", self._list)
        app.router.add_get("/v1/predictions/{id}", self._get)
        app.router.add_post("/v1/predictions/{id}/cancel", self._cancel)
        app.router.add_get("/files/{id}/{filename}", self._file)
        app.router.add_get("/v1/account", self._account)
        return app

    async def _account(self, request: web.Request) -> web.Response:
        """GET /v1/account: the cheapest authenticated read (the health probe's)."""
        self.counters.hit("account")
        if (error := self._auth_error(request)) is not None:
            return error
        return web.json_response({"type": "organization", "username": "studio", "name": "Studio"})

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
            return _slow_down(429, self.behaviour.retry_after)
        if self.overload_next > 0:
            self.overload_next -= 1
            self.counters.hit("overloaded")
            return _slow_down(503, self.behaviour.retry_after)
        try:
            body = await request.json()
        except ValueError:
            return _problem(400, "Bad request", "Request body is not valid JSON")
        version = version or body.get("version")
        inputs = body.get("input") or {}
        if not version or not isinstance(inputs, dict) or not inputs.get("prompt"):
            return _problem(422, "Input validation failed", "- input: prompt is required")
        if invalid := self._invalid_fields(inputs):
            self.counters.hit("invalid")
            detail = "".join(f"- {e['field']}: {e['description']}\n" for e in invalid)
            return web.json_response(
                {"title": "Input validation failed", "detail": detail, "status": 422,
                 "invalid_fields": invalid},
                status=422, content_type="application/problem+json",
            )
        # no await from here to the task's start: the capacity check and count are exact
        if not self.flight.admit():
            self.counters.hit("throttled" if self.flight.status == 429 else "overloaded")
            return _slow_down(self.flight.status, self.flight.retry_after)
        self.counters.hit("accepted")
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
        self.jobs.append({
            "id": pid, "seed": inputs.get("seed"),
            "aspect_ratio": inputs.get("aspect_ratio", "1:1"),
            "lora_scale": inputs.get("lora_scale", 1),
        })
        self.bill()
        self._done[pid] = asyncio.Event()
        self._ready[pid] = asyncio.Event()
        self._tasks[pid] = asyncio.create_task(self._run(pid, base))
        wait = self._prefer_wait(request.headers.get("Prefer", ""))
        if wait and self.sync_wait_cap is not None:
            wait = min(wait, self.sync_wait_cap)
        if wait:
            try:
                await asyncio.wait_for(self._ready[pid].wait(), timeout=wait)
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
        try:
            await self._generate(pid, base)
        finally:
            self.flight.leave()  # in flight from the accepted create to the end

    async def _generate(self, pid: str, base: str) -> None:
        prediction = self.predictions[pid]
        latency, fail = self.behaviour.draw()
        ending = self.end_next.popleft() if self.end_next else None
        fail = fail or ending == "failed"
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
            if ending in ("canceled", "aborted"):
                self.counters.hit(ending)
                prediction["status"] = ending
            elif fail:
                self.counters.hit("failed")
                prediction["status"] = "failed"
                prediction["error"] = "Prediction failed: the model raised an error"
            else:
                self.counters.hit("succeeded")
                self.files[pid] = _ratio_png(
                    f"replicate-{pid}", prediction["input"].get("aspect_ratio", "1:1"),
                    self.image_size,
                )
                prediction["output"] = self._output(pid, base)
                if self.files_before_end is not None:
                    self._ready[pid].set()  # the held answer goes out while "processing"
                    await asyncio.sleep(self.files_before_end)
                prediction["status"] = "succeeded"
                prediction["metrics"] = {"predict_time": latency}
        prediction["completed_at"] = _now()
        self._done[pid].set()
        self._ready[pid].set()
        self._tasks.pop(pid, None)

    async def _get(self, request: web.Request) -> web.Response:
        self.counters.hit("get")
        if (error := self._auth_error(request)) is not None:
            return error
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        return web.json_response(prediction)

    async def _list(self, request: web.Request) -> web.Response:
        """GET /v1/predictions: newest first, `list_page_size` a page, `next` a cursor URL."""
        self.counters.hit("list")
        if (error := self._auth_error(request)) is not None:
            return error
        newest = list(reversed(self.predictions.values()))  # created in insertion order
        start = int(request.query.get("cursor", "0"))
        size = self.list_page_size
        page = newest[start : start + size]
        more = start + size < len(newest)
        base = str(request.url.origin())
        return web.json_response({
            "previous": None,
            "next": f"{base}/v1/predictions?cursor={start + size}" if more else None,
            "results": page,
        })

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
        self.file_authorizations.append(request.headers.get("Authorization"))
        if self.file_fail_next > 0:
            self.file_fail_next -= 1
            self.counters.hit("file_failed")
            return web.Response(status=self.file_fail_status, text="delivery failed")
        data = self.files.get(request.match_info["id"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="image/png")
