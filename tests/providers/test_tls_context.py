"""The provider clients share one TLS context per process (studio/providers/tls.py),
built as httpx builds its default one."""

from __future__ import annotations

import ssl

import certifi
import httpx

from studio.providers import tls
from studio.providers.comfyui import ComfyUIProvider
from studio.providers.replicate_flux import ReplicateFluxProvider


def test_one_context_with_httpx_default_roots_per_settings(monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    first = tls.client_context()
    assert first is tls.client_context()
    assert first.verify_mode == ssl.CERT_REQUIRED and first.check_hostname
    assert first.cert_store_stats()["x509_ca"] == httpx.create_ssl_context().cert_store_stats()[
        "x509_ca"
    ]
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())  # an operator's bundle: its own
    other = tls.client_context()
    assert other is not first and other is tls.client_context()


async def test_the_provider_clients_use_it():
    shared = tls.client_context()
    comfyui = ComfyUIProvider(endpoint="http://127.0.0.1:9")
    replicate = ReplicateFluxProvider("r8_test", base_url="http://127.0.0.1:9")
    try:
        pools = [
            comfyui._client._transport._pool,  # type: ignore[attr-defined]
            replicate._delivery._async_client._transport._pool,  # type: ignore[attr-defined]
        ]
        assert all(pool._ssl_context is shared for pool in pools)
    finally:
        await comfyui.aclose()
        await replicate.aclose()
