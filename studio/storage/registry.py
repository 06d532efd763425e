"""Which content store a batch uses."""

from __future__ import annotations

from studio.settings import Settings
from studio.storage.local import LocalContentStore


def build_content_store(settings: Settings) -> LocalContentStore:
    return LocalContentStore(settings.studio_home / "content")


def storage_status(settings: Settings) -> dict[str, object]:
    store = build_content_store(settings)
    return {"configured": False, "backend": store.name, "stand_in": store.stand_in,
            "root": str(store.root)}
