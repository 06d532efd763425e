"""A loopback stand-in for a deployed Modal web endpoint serving SDXL + LoRA.

It behaves like Modal's HTTP front door for a `@modal.fastapi_endpoint` with
`requires_proxy_auth=True`:
- requests without the right `Modal-Key`/`Modal-Secret` headers get 401
  ("modal-http: missing credentials for proxy authorization");
- a request still running after `redirect_after` seconds (Modal: 150 s) is answered
  `303 See Other` with `Location: <endpoint>/?__modal_function_call_id=fc-...`; a GET on
  that URL waits again and answers the result or another 303; the result URL "can be
  reloaded without triggering a new request", so a finished call answers again;
- a failing function call answers 500 "Internal Server Error"; a bad body answers 422
  with FastAPI's `{"detail": [...]}`; an unknown call id answers 404.

The endpoint contract (ours, documented in studio/providers/modal_endpoint.py): POST JSON
{prompt, negative_prompt, lora_url, lora_strength, seed, width, height,
num_inference_steps} -> 200 image/png. `width`/`height` (default 1024) must be integers,
multiples of 64 from 512 to 2048, `lora_strength` (default 1.0) a number from -1 to 3:
anything else answers 422 with pydantic's error per field (`int_type`, `multiple_of`,
`greater_than_equal`, `less_than_equal`, `float_type`), before any call is made.
`jobs` records what each function call was asked for ({call_id, seed, width, height,
lora_strength}), and its image has the asked-for proportions (`image_size` pixels per
1024, so 1024x1024 gives the 64x64 PNG of before and 768x1344 a 48x84 one).

Switches (one per documented variant, see tests/emulators/README.md): latency,
failure_rate, hang, `redirect_after` (seconds; 0 = always redirect); `fail_next(*statuses)`
(the next POSTs answer these statuses from the front door, no call made);
`result_fail_next`/`result_fail_status` (the next result-URL GETs fail: a lost result);
`content_type` (of the 200 body, e.g. "application/octet-stream"); `body_override`
(a 200 body of a shape the contract does not list: b"", JSON, HTML); `forget_calls()`
(results expired). `billed_jobs` counts function calls made (POSTs that passed proxy
auth and body validation).

Throttling (issue 20): `Behaviour.throttle_next`/`throttle_rate` make the next POSTs
answer 429 (rate limited) and `overload_next` 503 (overloaded), both from the front door
with `Retry-After: behaviour.retry_after` and no call made; `capacity` (int | None) is
the endpoint's hidden true capacity: a POST while that many calls run answers
`capacity_status` (429, or 503) with `Retry-After: capacity_retry_after` (default 1 s),
after validation, nothing billed; `capacity_schedule([(seconds, C), ...])` and `flight`
(tests/emulators/capacity.py: accepted calls, refusals, peak, timeline) as on Replicate.
Modal documents neither answer's text; ours carry the front door's `modal-http:` prefix.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque

from aiohttp import web

from tests.emulators.base import Behaviour, Emulator
from tests.emulators.capacity import Capacity, CapacitySwitches

MODAL_REDIRECT_AFTER = 150.0
#: our endpoint's size and LoRA-strength constraints (studio/providers/modal_endpoint.py)
SIZE_MULTIPLE = 64
SIZE_MIN, SIZE_MAX = 512, 2048
STRENGTH_MIN, STRENGTH_MAX = -1.0, 3.0


def sized_png(label: str, width: int, height: int) -> bytes:
    """A real PNG of width x height whose colour derives from `label`."""
    import hashlib
    import io

    from PIL import Image

    digest = hashlib.sha256(label.encode()).digest()
    image = Image.new("RGB", (max(1, width), max(1, height)), tuple(digest[:3]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _error(kind: str, field: str, msg: str, value: object, **ctx: object) -> dict:
    """One pydantic v2 error as FastAPI lists it in a 422's `detail`."""
    error: dict = {"type": kind, "loc": ["body", field], "msg": msg, "input": value}
    if ctx:
        error["ctx"] = ctx
    return error


def body_errors(body: dict) -> list[dict]:
    """The 422 `detail` entries for width, height and lora_strength (empty: valid)."""
    errors = []
    for field in ("width", "height"):
        value = body.get(field, 1024)
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(_error("int_type", field, "Input should be a valid integer", value))
        elif value % SIZE_MULTIPLE:
            errors.append(_error(
                "multiple_of", field, f"Input should be a multiple of {SIZE_MULTIPLE}", value,
                multiple_of=SIZE_MULTIPLE,
            ))
        elif value < SIZE_MIN:
            errors.append(_error(
                "greater_than_equal", field,
                f"Input should be greater than or equal to {SIZE_MIN}", value, ge=SIZE_MIN,
            ))
        elif value > SIZE_MAX:
            errors.append(_error(
                "less_than_equal", field,
                f"Input should be less than or equal to {SIZE_MAX}", value, le=SIZE_MAX,
            ))
    strength = body.get("lora_strength", 1.0)
    if not isinstance(strength, int | float) or isinstance(strength, bool):
        errors.append(_error("float_type", "lora_strength", "Input should be a valid number",
                             strength))
    elif strength < STRENGTH_MIN:
        errors.append(_error(
            "greater_than_equal", "lora_strength",
            f"Input should be greater than or equal to {STRENGTH_MIN}", strength,
            ge=STRENGTH_MIN,
        ))
    elif strength > STRENGTH_MAX:
        errors.append(_error(
            "less_than_equal", "lora_strength",
            f"Input should be less than or equal to {STRENGTH_MAX}", strength, le=STRENGTH_MAX,
        ))
    return errors


class _Failed(Exception):
    pass


def _slow_down(status: int, retry_after: float | None) -> web.Response:
    """The front door's throttling answer (429 rate limited, 503 overloaded)."""
    headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
    text = "too many requests" if status == 429 else "service overloaded, try again later"
    return web.Response(status=status, text=f"modal-http: {text}", headers=headers)


class ModalEndpointEmulator(CapacitySwitches, Emulator):
    def __init__(
        self,
        behaviour: Behaviour | None = None,
        *,
        token_id: str | None = None,
        token_secret: str | None = None,
        redirect_after: float = MODAL_REDIRECT_AFTER,
        image_size: int = 64,
    ) -> None:
        super().__init__(behaviour)
        self.token_id = token_id
        self.token_secret = token_secret
        self.redirect_after = redirect_after
        self.image_size = image_size
        self.bodies: list[dict] = []
        #: what each function call was asked for: {call_id, seed, width, height, lora_strength}
        self.jobs: list[dict] = []
        self._calls: dict[str, asyncio.Task[bytes]] = {}
        #: one (key, latency, failed) per generation; key = the body's seed
        self.records: list[tuple[str, float, bool]] = []
        # --- response-variant switches (module docstring) ---
        self.errors_next: deque[int] = deque()
        self.result_fail_next = 0
        self.result_fail_status = 502
        self.content_type = "image/png"
        self.body_override: bytes | None = None
        #: the body shape of each call, fixed when it was made (a reload answers the same)
        self._shapes: dict[str, tuple[bytes | None, str]] = {}
        #: the hidden true capacity and what it saw (module docstring: Throttling)
        self.flight = Capacity()
        #: the next POSTs answer 503 with Retry-After (behaviour.retry_after)
        self.overload_next = 0

    def fail_next(self, *statuses: int) -> None:
        """The next POSTs answer these statuses before any function call is made."""
        self.errors_next.extend(statuses)

    def forget_calls(self) -> None:
        """Every result is gone: result URLs answer 404."""
        self._calls.clear()

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/", self._post)
        app.router.add_get("/", self._get_result)
        return app

    def _authorised(self, request: web.Request) -> bool:
        if self.token_id is None:
            return True
        return (
            request.headers.get("Modal-Key") == self.token_id
            and request.headers.get("Modal-Secret") == self.token_secret
        )

    @staticmethod
    def _unauthorised() -> web.Response:
        return web.Response(
            status=401, text="modal-http: missing credentials for proxy authorization"
        )

    async def _generate(
        self, call_id: str, key: str = "", size: tuple[int, int] = (1024, 1024)
    ) -> bytes:
        latency, fail = self.behaviour.draw()
        self.records.append((key, latency, fail))
        async with self.counters.generating():
            await self.behaviour.wait_while_hung()
            await asyncio.sleep(latency)
        if fail:
            self.counters.hit("failed")
            raise _Failed(call_id)
        self.counters.hit("succeeded")
        width, height = (round(side * self.image_size / 1024) for side in size)
        return sized_png(f"modal-{call_id}", width, height)

    async def _answer(self, request: web.Request, call_id: str) -> web.Response:
        task = self._calls[call_id]
        try:
            data = await asyncio.wait_for(asyncio.shield(task), timeout=self.redirect_after)
        except TimeoutError:
            self.counters.hit("redirect")
            location = f"{request.url.origin()}/?__modal_function_call_id={call_id}"
            return web.Response(status=303, headers={"Location": location})
        except _Failed:
            return web.Response(status=500, text="Internal Server Error")
        body, content_type = self._shapes.get(call_id, (None, self.content_type))
        return web.Response(body=data if body is None else body, content_type=content_type)

    async def _post(self, request: web.Request) -> web.Response:
        self.counters.hit("post")
        if not self._authorised(request):
            return self._unauthorised()
        if self.errors_next:
            status = self.errors_next.popleft()
            return web.Response(status=status, text=f"modal-http: emulated {status}")
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
            body = None
        missing = [k for k in ("prompt", "lora_url") if not isinstance(body, dict) or k not in body]
        if missing:
            detail = [
                {"type": "missing", "loc": ["body", k], "msg": "Field required", "input": body}
                for k in missing
            ]
            return web.json_response({"detail": detail}, status=422)
        if detail := body_errors(body):
            self.counters.hit("invalid")
            return web.json_response({"detail": detail}, status=422)
        # no await from here to the call's start: the capacity check and count are exact
        if not self.flight.admit():
            self.counters.hit("throttled" if self.flight.status == 429 else "overloaded")
            return _slow_down(self.flight.status, self.flight.retry_after)
        self.counters.hit("accepted")
        self.bodies.append(body)
        self.bill()
        call_id = f"fc-{uuid.uuid4().hex[:26]}"
        size = (body.get("width", 1024), body.get("height", 1024))
        self.jobs.append({
            "call_id": call_id, "seed": body.get("seed"), "width": size[0], "height": size[1],
            "lora_strength": body.get("lora_strength", 1.0),
        })
        self._shapes[call_id] = (self.body_override, self.content_type)
        self._calls[call_id] = asyncio.create_task(
            self._generate(call_id, str(body.get("seed", "")), size)
        )
        self._calls[call_id].add_done_callback(lambda _: self.flight.leave())
        return await self._answer(request, call_id)

    async def _get_result(self, request: web.Request) -> web.Response:
        self.counters.hit("get")
        if not self._authorised(request):
            return self._unauthorised()
        call_id = request.query.get("__modal_function_call_id", "")
        if self.result_fail_next > 0:
            self.result_fail_next -= 1
            self.counters.hit("result_failed")
            return web.Response(status=self.result_fail_status, text="Bad Gateway")
        if call_id not in self._calls:
            return web.Response(status=404, text="modal-http: function call not found")
        return await self._answer(request, call_id)
