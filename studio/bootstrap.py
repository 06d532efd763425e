"""Bring a fresh checkout to a runnable state: schema, templates, the demo avatar."""

from __future__ import annotations

from typing import Any

from studio.avatars import add_avatar, find_avatar
from studio.catalog import install_bundled_templates, reset_template_library
from studio.db.engine import get_engine, session_scope
from studio.db.migrate import upgrade_to_head
from studio.settings import Settings, get_settings

DEMO_AVATAR = "demo"
#: The demo avatar's weights are never fetched by the offline preview renderer; a real
#: provider needs a real URL (set it with `studio avatar add --lora`).
DEMO_LORA_URL = "https://example.com/loras/demo-avatar.safetensors"


def initialise(settings: Settings | None = None) -> dict[str, Any]:
    s = settings or get_settings()
    s.studio_home.mkdir(parents=True, exist_ok=True)
    upgrade_to_head(get_engine(s))
    with session_scope(s) as session:
        count = install_bundled_templates(session)
    reset_template_library()
    url = s.resolved_database_url
    return {"database": url.split("@")[-1] if "@" in url else url, "templates": count}


def ensure_demo_avatar(settings: Settings | None = None) -> str:
    with session_scope(settings) as session:
        avatar = find_avatar(session, DEMO_AVATAR)
        if avatar is None:
            avatar = add_avatar(session, DEMO_AVATAR, "fitness", DEMO_LORA_URL, "daily")
        return avatar.id
