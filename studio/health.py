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
    from studio.db.schema_check import schema_problem

    if problem := schema_problem(settings):  # no schema / no file: say how, create nothing
        return {"status": "unhealthy", "error": problem}
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


def budget_check(settings: Settings) -> dict[str, Any]:
    """The budgets in force (null: turned off with `none`) and what was spent today (UTC).

    Why in health: a budget is what stops a runaway batch or a loop of runs; an operator
    should see at a glance which are on, and how close the busiest avatar is to its cap.
    A bad budget variable makes the check unhealthy, naming the variable.
    """
    from sqlalchemy import func, select

    from studio.db.models import CostLedgerEntry as Row
    from studio.ledger.store import COUNTED, day_start
    from studio.ledger.validation import validate_cost_settings
    from studio.request import BatchRequestError

    try:
        budgets = validate_cost_settings()
    except BatchRequestError as exc:
        return {"status": "unhealthy", "error": f"{exc.field}: {exc.message}"}
    report: dict[str, Any] = {
        "status": "healthy",
        "batch_budget_usd": budgets.batch_budget_usd,
        "avatar_daily_budget_usd": budgets.avatar_daily_budget_usd,
    }
    if not budgets.any_budget:
        report["warning"] = "no budget: BATCH_BUDGET_USD and AVATAR_DAILY_BUDGET_USD are none"
    try:
        with session_scope(settings) as session:
            spent = func.coalesce(func.sum(Row.price_usd), 0.0)
            per_avatar = (
                select(Row.avatar_id, spent.label("usd"))
                .where(Row.status.in_(COUNTED), Row.created_at >= day_start())
                .group_by(Row.avatar_id)
                .subquery()
            )
            total, top = session.execute(
                select(func.coalesce(func.sum(per_avatar.c.usd), 0.0), func.max(per_avatar.c.usd))
            ).one()
    except Exception as exc:  # health reports, never raises
        report["spent_today"] = {"error": type(exc).__name__}
        return report
    report["spent_today_usd"] = round(float(total or 0.0), 4)
    report["top_avatar_spent_today_usd"] = round(float(top or 0.0), 4)
    return report


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
        "budgets": budget_check(s),
    }
    healthy = (
        checks["database"]["status"] == "healthy"
        and checks["template_library"]["status"] == "healthy"
        # a public URL with no private bucket would publish premium pieces: not healthy
        and checks.get("r2_storage", {}).get("status") != "misconfigured"
    )
    return {
        "status": "healthy" if healthy else "unhealthy",
        "checks": checks,
        "template_library": checks["template_library"],
    }
