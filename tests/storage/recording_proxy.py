"""A tiny loopback HTTP proxy in front of the S3 server: records what is on the wire and
can answer the next N uploads with 503, to test retries against the real server.

The Host header is forwarded unchanged, so SigV4 signatures (which cover it) still verify.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}
_UNAVAILABLE = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body_size: int


@dataclass
class RecordingProxy:
    upstream: str
    requests: list[Recorded] = field(default_factory=list)
    fail_puts: int = 0
    #: called with the path (/bucket/key) of every PUT the server accepted, right after
    #: it answered: a test can probe each object while it exists (e.g. staged ones)
    on_put: Callable[[str], None] | None = None
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> RecordingProxy:
        proxy = self
        client = httpx.Client(base_url=self.upstream, timeout=30)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                return None

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                proxy.requests.append(Recorded(self.command, self.path, headers, len(body)))
                if self.command == "PUT" and proxy.fail_puts > 0:
                    proxy.fail_puts -= 1
                    self._answer(503, {"Content-Type": "application/xml"}, _UNAVAILABLE)
                    return
                forwarded = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                response = client.request(self.command, self.path, headers=forwarded, content=body)
                out = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP}
                if self.command == "HEAD" and "content-length" in response.headers:
                    out["Content-Length"] = response.headers["content-length"]
                self._answer(response.status_code, out, response.content)
                if self.command == "PUT" and response.status_code == 200 and proxy.on_put:
                    proxy.on_put(self.path.split("?", 1)[0])

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(body)))
                elif "content-length" not in {k.lower() for k in headers}:
                    self.send_header("Content-Length", "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _relay

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def of(self, method: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method]
