"""Links to stored pieces, minted when someone asks for them.

Why on demand: a presigned link is a bearer credential for a premium file. Kept in a
row, an artifact or an event it outlives its purpose and leaks with whatever holds it
(issue 15: artifacts held 102 three-day links). Rows and events keep the object key;
`studio pieces --links` and the batch's links artifact mint links that live
PRESIGNED_URL_TTL_SECONDS (1 hour by default), and say until when.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from studio.settings import Settings
from studio.storage.errors import StorageError
from studio.storage.registry import build_remote_store, storage_settings
from studio.types import Tier

log = logging.getLogger("studio.storage")


class LinkMinter:
    """Mints the links of one listing or artifact, all expiring at the same moment."""

    def __init__(self, settings: Settings, ttl_seconds: int | None = None) -> None:
        storage = storage_settings(settings)
        self.ttl_seconds = ttl_seconds or storage.presigned_url_ttl_seconds
        self.expires_at = datetime.now(UTC) + timedelta(seconds=self.ttl_seconds)
        self._remote = build_remote_store(settings) if storage.r2_configured else None
        self.minted = 0

    def link(self, key: str | None, tier: str, backend: str | None, lasting: str | None) -> str:
        """The piece's lasting link (capa1's public URL, a local file) when it has one,
        else a fresh short-lived one to the remote object; "" when neither exists."""
        if lasting and lasting.startswith(("http://", "https://", "file://")):
            return lasting
        if self._remote is None or backend != "r2" or not key:
            return ""
        try:
            link = self._remote.presigned_url(key, _tier(tier), self.ttl_seconds)
        except StorageError as exc:  # e.g. a public URL and no private bucket
            log.warning("Link not minted | %s", exc)
            return ""
        self.minted += 1
        return link

    def expiry_note(self) -> str:
        """What a reader needs to know about the minted links, in one sentence."""
        until = self.expires_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        return (
            f"premium links expire at {until} (PRESIGNED_URL_TTL_SECONDS={self.ttl_seconds}); "
            "mint fresh ones with `studio pieces --avatar <avatar> --links`"
        )


def _tier(value: str) -> Tier:
    return value if value in ("capa1", "capa2", "capa3") else "capa3"  # type: ignore[return-value]
