"""The spec's health check: database, template cache, providers and storage, as JSON."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import text

from studio.catalog import template_library
from studio.db.engine import session_scope
from studio.settings import Settings, get_settings
from studio.stats import database_counts


def database_check(settings: Settings) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        with session_scope(settings) as session:
            session.execute(text("SELECT 1"))
            counts = database_counts(session)
    except Exception as exc:  # health reports, never raises
        return {"status": "unhealthy", "error": type(exc).__name__}
    url = settings.resolved_database_url
    return {
        "status": "healthy",
        "backend": url.split(":", 1)[0],
        "response_ms": round((time.perf_counter() - started) * 1000, 2),
        **counts,
    }


def template_check() -> dict[str, Any]:
    library = template_library()
    try:
        count = len(library.all_templates())
    except Exception as exc:
        return {"status": "unhealthy", "error": type(exc).__name__}
    return {
        "status": "healthy" if count else "empty",
        "templates": count,
        "cache_performance": library.cache_stats(),
    }


def health_report(settings: Settings | None = None) -> dict[str, Any]:
    from studio.hooks.registry import hook_writer_status
    from studio.moderation.registry import moderator_status
    from studio.providers.registry import provider_availability
    from studio.storage.registry import storage_status

    s = settings or get_settings()
    checks = {
        "database": database_check(s),
        "template_library": template_check(),
        "providers": provider_availability(),
        "hooks": hook_writer_status(),
        "moderation": moderator_status(),
        "r2_storage": storage_status(s),
    }
    healthy = (
        checks["database"]["status"] == "healthy"
        and checks["template_library"]["status"] == "healthy"
    )
    return {
        "status": "healthy" if healthy else "unhealthy",
        "checks": checks,
        "template_library": checks["template_library"],
    }
