"""One SSL context per process for every Prefect API client.

WORKAROUND: each `PrefectClient` / `SyncPrefectClient` builds its own SSL context
(`ssl.create_default_context(cafile=certifi.where())`: parsing the CA bundle, 30-70 ms
of CPU) unless its `httpx_settings` bring one, and a flow-run process opens several
(the engine's, the flow's, the task runs', the log and event workers'), even for a
plain-http API that never uses it: issue 20 measured 15 % of a deployment run's CPU
there. Upstream: PrefectHQ/prefect#19106 (open) lets callers pass one shared context;
Prefect's own call sites do not yet. Until then `install()` wraps both clients'
constructors so that, when the caller gave no `verify`, they get one context built the
way Prefect builds it (PREFECT_API_TLS_INSECURE_SKIP_VERIFY, PREFECT_API_SSL_CERT_FILE
else certifi's bundle) and kept per those two settings. An `SSLContext` is safe to share
between clients and threads once configured; nothing here changes it after it is built.

A client of a plain-http API (`http://...`, the loopback server of `studio batch run`
and most workers' `studio server`) never opens a TLS connection, yet Prefect would still
build the context; it gets one that loads no certificates at all (microseconds): it
verifies, so were it ever used for TLS it would refuse every server (fails closed).
"""

from __future__ import annotations

import functools
import ssl
import threading
from typing import Any

_lock = threading.RLock()
_installed = False


@functools.lru_cache(maxsize=4)
def _context(insecure: bool, cafile: str | None) -> ssl.SSLContext:
    """The context Prefect would build for these settings (see its client __init__)."""
    if cafile is None and not insecure:  # plain http: nothing to verify against
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, no CA: fails closed
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=cafile)


def shared_context(api: Any = None) -> ssl.SSLContext:
    """This process's context for a client of `api` under the Prefect settings in force
    now (a cached one; built once, under a lock, whichever thread asks first)."""
    import certifi
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY

    with _lock:
        if isinstance(api, str) and api.lower().startswith("http://"):
            return _context(False, None)
        if PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value():
            return _context(True, None)
        return _context(False, PREFECT_API_SSL_CERT_FILE.value() or certifi.where())


def _wrap(cls: type) -> None:
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self: Any, api: Any, *args: Any, **kwargs: Any) -> None:
        settings = dict(kwargs.get("httpx_settings") or {})
        if "verify" not in settings:  # a caller's own verify (context, path, False) wins
            settings["verify"] = shared_context(api)
            kwargs["httpx_settings"] = settings
        original(self, api, *args, **kwargs)

    __init__.__studio_shared_ssl__ = True  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[method-assign]


def install() -> None:
    """Idempotent: from now on this process's Prefect clients share one SSL context."""
    global _installed
    with _lock:
        if _installed:
            return
        from prefect.client.orchestration import PrefectClient, SyncPrefectClient

        for cls in (PrefectClient, SyncPrefectClient):
            if not getattr(cls.__init__, "__studio_shared_ssl__", False):
                _wrap(cls)
        _installed = True
