"""One TLS context per process for the provider clients.

Why: httpx builds a context for every client and transport it makes
(`httpx._config.create_ssl_context`: certifi's bundle loaded, ~40 ms of CPU on a 2-core
host); a batch makes four provider clients (ComfyUI, its workflow check, Replicate's
transport and its delivery client), 0.16 s of a forked run's CPU (issue 20). The context
is built as httpx builds its default one (SSL_CERT_FILE, else SSL_CERT_DIR, else certifi)
and kept per those settings; the warm process runs fork from (engine/warm_server.py)
builds it before forking, so the runs share it. Prefect's own clients have theirs
(engine/ssl_reuse.py). None of the provider clients speaks HTTP/2, so the ALPN httpcore
sets on the context per connection is always the same.
"""

from __future__ import annotations

import functools
import os
import ssl


@functools.cache
def _context(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    if cafile:
        return ssl.create_default_context(cafile=cafile)
    if capath:
        return ssl.create_default_context(capath=capath)
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def client_context() -> ssl.SSLContext:
    """What a provider's httpx client passes as `verify=` (httpx's default, built once)."""
    return _context(
        os.environ.get("SSL_CERT_FILE") or None, os.environ.get("SSL_CERT_DIR") or None
    )
