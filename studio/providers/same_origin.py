"""Credentials stay on the origin they were configured for.

Why: a client that holds a key sends it with every request, and the HTTP clients we use
follow redirects in ways that differ by library. httpx / httpx2 drop only the
`Authorization` header on a redirect to another origin and keep every other header
(Modal's `Modal-Key`/`Modal-Secret`, an older `X-Api-Key`) and, on 307/308, the body
(prompts, images under moderation). The anthropic and openai SDKs follow redirects; a
base URL that answers `307 Location: https://elsewhere/` would hand them on.

So every client that carries a provider credential gets `pin_origin(base_url)` as a
request event hook. httpx and httpx2 run request hooks for each request of a redirect
chain before it is sent (`_send_handling_redirects`), so a request to any other origin
(scheme, host and port) is refused before a byte of it leaves; same-origin redirects,
such as Modal's documented 303 to its own result URL, go on as before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

logger = logging.getLogger("studio.providers")

DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


def origin_of(url: object) -> Origin:
    """(scheme, host, port) of a URL string or an httpx/httpx2 URL, default port filled in."""
    parts = urlsplit(str(url))
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port or DEFAULT_PORTS.get(scheme, 0)
    return scheme, host, port


def describe_origin(origin: Origin) -> str:
    scheme, host, port = origin
    return f"{scheme}://{host}:{port}"


class ForeignOrigin(httpx.RequestError):
    """A credentialed client was asked to send a request to another origin; nothing was sent.

    A `httpx.RequestError`, so callers that handle transport failures treat it as one
    (the SDKs turn it into a connection error); the message names origins only, never
    the request's headers or body.
    """

    def __init__(self, allowed: Origin, refused: Origin) -> None:
        super().__init__(
            f"refused to send credentials to {describe_origin(refused)}: "
            f"this client is pinned to {describe_origin(allowed)}"
        )
        self.allowed = allowed
        self.refused = refused


def same_origin(url: object, base_url: object) -> bool:
    return origin_of(url) == origin_of(base_url)


def pin_origin(base_url: str) -> Callable[[Any], Awaitable[None]]:
    """An async request event hook refusing any request whose origin is not `base_url`'s."""
    allowed = origin_of(base_url)

    async def _refuse_other_origins(request: Any) -> None:
        refused = origin_of(request.url)
        if refused != allowed:
            error = ForeignOrigin(allowed, refused)
            # the SDKs report it as a connection error: say here what really happened
            logger.warning("Credentials kept | %s", error)
            raise error

    return _refuse_other_origins


class RedirectRefused(httpx.RequestError):
    """A credentialed API answered with a redirect where its protocol has none."""


async def refuse_redirects(response: Any) -> None:
    """A response event hook for APIs that never redirect (Replicate's): a 3xx is an error
    naming its status and target origin, instead of a body the SDK cannot parse."""
    if 300 <= response.status_code < 400 and "location" in response.headers:
        target = describe_origin(origin_of(response.url.join(response.headers["location"])))
        raise RedirectRefused(
            f"answered HTTP {response.status_code} redirect to {target}: not followed"
        )
