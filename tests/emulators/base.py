"""Shared machinery for the loopback emulators of external HTTP APIs.

Every emulator is a real HTTP server on 127.0.0.1 with an ephemeral port, running in a
background thread with its own event loop, so that the official SDKs (and other
processes) reach it by URL exactly as they would reach the real service.

`Behaviour` holds the switches a test flips (latency range, failure rate, 429s, hang)
and draws every random decision from one seeded RNG so runs are reproducible.
`Counters` counts requests and the in-flight gauge with its PEAK, thread-safely, because
the server thread writes while the test thread reads. `Emulator.billed_jobs` counts what
the real provider would bill (created predictions, executed prompts, accepted calls), so
a test can say "paid once" at the provider's side, not from the client's own account.

Switch style: a switch is a plain attribute (or a `*_next` deque/counter consumed one
request at a time) on the emulator or its `Behaviour`; every documented response
variant has one (see tests/emulators/README.md).

Both aiohttp `web.Application`s and ASGI apps (starlette/fastapi) are accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


class Counters:
    """Request counts per kind plus a current/peak gauge of in-flight generations."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._in_flight = 0
        self._peak = 0

    def hit(self, kind: str) -> None:
        with self._lock:
            self._requests[kind] += 1

    def requests(self, kind: str | None = None) -> int:
        """Requests of one kind, or of every kind when `kind` is None."""
        with self._lock:
            if kind is None:
                return sum(self._requests.values())
            return self._requests[kind]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._requests)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def peak(self) -> int:
        """Highest number of generations ever in flight at once since the last reset."""
        with self._lock:
            return self._peak

    def enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._peak = max(self._peak, self._in_flight)

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    @contextlib.asynccontextmanager
    async def generating(self) -> AsyncIterator[None]:
        """Count one generation as in flight for the duration of the block."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._peak = self._in_flight


@dataclass
class Behaviour:
    """Switches a test flips at any time; random choices come from one seeded RNG.

    latency: (min, max) seconds a generation takes, uniformly drawn.
    failure_rate: probability that a generation fails with the API's error shape.
    throttle_rate: probability that a create call answers 429 with `retry_after`.
    throttle_next: the next N create calls answer 429 (deterministic, for tests).
    hang: while True, generations never finish (until switched off or the server stops).
    finish_at_most: when set, only that many generations (counted from when it was set)
        get past the start; later ones wait as if hung until it is cleared.
        A test uses it to have exactly N images done before it changes the world.
    """

    seed: int = 0
    latency: tuple[float, float] = (0.0, 0.0)
    failure_rate: float = 0.0
    throttle_rate: float = 0.0
    throttle_next: int = 0
    retry_after: float = 1.0
    hang: bool = False
    finish_at_most: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._passed = 0  # generations that got past wait_while_hung

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "finish_at_most":
            self.__dict__["_passed"] = 0  # counted from now
        super().__setattr__(name, value)

    def reseed(self, seed: int) -> None:
        with self._lock:
            self.seed = seed
            self._rng = random.Random(seed)

    def draw_latency(self) -> float:
        lo, hi = self.latency
        with self._lock:
            return lo if hi <= lo else self._rng.uniform(lo, hi)

    def draw_failure(self) -> bool:
        with self._lock:
            return self.failure_rate > 0 and self._rng.random() < self.failure_rate

    def draw_throttle(self) -> bool:
        """True when this create call must be throttled (consumes `throttle_next` first)."""
        with self._lock:
            if self.throttle_next > 0:
                self.throttle_next -= 1
                return True
            return self.throttle_rate > 0 and self._rng.random() < self.throttle_rate

    def draw(self) -> tuple[float, bool]:
        """Latency and failure for one generation, drawn together in a fixed order."""
        return self.draw_latency(), self.draw_failure()

    async def wait_while_hung(self, poll: float = 0.05) -> None:
        """Block while the hang switch is on, or while `finish_at_most` generations
        already passed; returns as soon as neither holds."""
        while True:
            if not self.hang:
                with self._lock:
                    if self.finish_at_most is None or self._passed < self.finish_at_most:
                        self._passed += 1
                        return
            await asyncio.sleep(poll)


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class LoopbackServer:
    """Runs an aiohttp Application or an ASGI app on 127.0.0.1:<ephemeral> in a thread.

    Usable as a context manager; `url` is the base URL (no trailing slash). The server
    loop is separate from any loop the test uses, so a blocked test never stalls it.
    """

    def __init__(self, app: web.Application | Callable[..., Any], *, host: str = "127.0.0.1"):
        self.app = app
        self.host = host
        self.port: int = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LoopbackServer:
        sock = _free_socket()
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name=f"emulator-{self.port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout=15):
            raise RuntimeError("emulator did not start")
        if self._error is not None:
            raise RuntimeError(f"emulator failed to start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._thread = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(sock))
        except BaseException as exc:  # surfaced to start() when it happens early
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self, sock: socket.socket) -> None:
        self._stop = asyncio.Event()
        if isinstance(self.app, web.Application):
            runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
            await runner.setup()
            site = web.SockSite(runner, sock, shutdown_timeout=0.5)
            await site.start()
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await runner.cleanup()
        else:
            import uvicorn

            config = uvicorn.Config(
                self.app, log_level="warning", access_log=False, lifespan="off",
                timeout_graceful_shutdown=1,
            )
            server = uvicorn.Server(config)
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started and not serving.done():
                await asyncio.sleep(0.01)
            self._ready.set()
            await self._stop.wait()
            server.should_exit = True
            await serving


class Emulator:
    """Base for an emulator: an app, its behaviour switches, counters and a server.

    Subclasses implement `build_app()` and use `self.behaviour`/`self.counters` in
    their handlers.
    """

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.counters = Counters()
        self._server: LoopbackServer | None = None

    def bill(self) -> None:
        """Record one job the real provider would charge for."""
        self.counters.hit("billed")

    @property
    def billed_jobs(self) -> int:
        """Jobs the real provider would have billed since the last counters reset."""
        return self.counters.requests("billed")

    def build_app(self) -> web.Application | Callable[..., Any]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return self._server.url

    def start(self) -> Emulator:
        self._server = LoopbackServer(self.build_app()).start()
        return self

    def stop(self) -> None:
        self.behaviour.hang = False  # let hung handlers return so shutdown is quick
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def png_bytes(label: str, size: int = 64) -> bytes:
    """A real PNG (pillow) whose colour derives from `label`, so images differ per request."""
    import hashlib
    import io

    from PIL import Image

    digest = hashlib.sha256(label.encode()).digest()
    image = Image.new("RGB", (size, size), tuple(digest[:3]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
