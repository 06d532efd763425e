"""The attacker's host: a loopback server that records every request it receives.

`CaptureServer` stands in for wherever a hostile block or redirect would send a client:
it records each request's method, path, headers and body and answers `status` (404 by
default, with a JSON error body the SDKs can parse). `RedirectServer` answers every
request with `status` (303, 307...) and `Location: <target><path and query>`, the shape
of a base URL or endpoint that bounces its clients to another origin.

Tests assert on `captured` (e.g. that no header carries a key): a leaked secret is then
seen where it would arrive, not inferred from our own client's configuration.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from aiohttp import web

from tests.emulators.base import LoopbackServer


@dataclass(frozen=True)
class CapturedRequest:
    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes

    def carries(self, secret: str) -> bool:
        """True when the secret appears in any header value, the URL or the body."""
        return (
            any(secret in value for value in self.headers.values())
            or secret in self.path_qs
            or secret.encode() in self.body
        )


class CaptureServer:
    """Records every request; answers `status` with a small JSON error body."""

    def __init__(self, status: int = 404) -> None:
        self.status = status
        self._lock = threading.Lock()
        self._captured: list[CapturedRequest] = []
        self._server = LoopbackServer(self._app())

    def _app(self) -> web.Application:
        async def record(request: web.Request) -> web.Response:
            body = await request.read()
            with self._lock:
                self._captured.append(
                    CapturedRequest(request.method, request.path_qs, dict(request.headers), body)
                )
            return web.json_response(
                {"error": {"type": "not_found_error", "message": "captured"}},
                status=self.status,
            )

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        return app

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def captured(self) -> list[CapturedRequest]:
        with self._lock:
            return list(self._captured)

    def leaked(self, *secrets: str) -> list[CapturedRequest]:
        """The captured requests that carry any of `secrets`."""
        return [r for r in self.captured if any(r.carries(s) for s in secrets if s)]

    def __enter__(self) -> CaptureServer:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()


class RedirectServer:
    """Answers every request with `status` and `Location: <target><path?query>`."""

    def __init__(self, target: str, status: int = 307) -> None:
        self.target = target.rstrip("/")
        self.status = status
        self.requests = 0
        self._server = LoopbackServer(self._app())

    def _app(self) -> web.Application:
        async def bounce(request: web.Request) -> web.Response:
            await request.read()
            self.requests += 1
            return web.Response(
                status=self.status, headers={"Location": self.target + request.path_qs}
            )

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", bounce)
        return app

    @property
    def url(self) -> str:
        return self._server.url

    def __enter__(self) -> RedirectServer:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
