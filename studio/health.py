"""The spec's health check: database, template cache, providers and storage, as JSON.

The spec's shape is kept (`status`, `checks.database`, `checks.template_library`,
`checks.providers`, `checks.r2_storage`, top-level `template_library`) and extended
(issue 16): every configured provider and store is probed (studio/probes.py), every
component says `healthy`, `degraded` or `unhealthy` with a reason (`components`), and
the overall status is the worst of them:

- `unhealthy`: something a batch needs does not work and nothing stands in for it: the
  database (unreachable, or its schema not at head), the template library, every
  configured image provider (none answers), OpenAI moderation when configured (pieces
  would be held for review, none published), an object store that refuses its keys or
  has no such bucket, a misconfigured store, PREFECT_API_URL not answering, a bad budget
  or probe variable; also a COMFYUI_ENDPOINT that is set and does not answer;
- `degraded`: batches work, on a fallback or a stand-in: an image provider down while
  another answers, Anthropic down (template hooks), an object store that does not answer
  (pieces kept locally until `studio storage-sync`), or any embedded stand-in in use
  (preview images, template hooks, local moderation, the local store: the embedded demo);
- `healthy`: every configured component answered and no stand-in is in use.

The database, budget and storage checks run in daemon threads, so a database that does
not answer costs the command one timeout and does not keep it alive.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import text

from studio.catalog import template_library
from studio.db.engine import session_scope
from studio.probes import DEGRADED, HEALTHY, UNHEALTHY, Probe, probe_timeout, run_probes
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


def budget_check(settings: Settings, *, read_spend: bool = True) -> dict[str, Any]:
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
    if not read_spend:  # no schema: the database check says so
        return report
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


T = TypeVar("T")
SEVERITY = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}
#: components whose status makes up the overall one (single image providers count
#: through `images`: a provider down behind a working one is a fallback in use)
OVERALL = (
    "database", "template_library", "images", "hooks", "moderation", "storage",
    "prefect_api", "budgets", "health_probes",
)


def worst(*statuses: str) -> str:
    return max(statuses, key=lambda s: SEVERITY.get(s, 2), default=HEALTHY)


async def in_daemon_thread(fn: Callable[[], T], timeout: float, fallback: T) -> T:
    """`fn()` in a daemon thread, or `fallback` after `timeout` seconds.

    Why not asyncio.to_thread: a database connect that hangs would keep the executor
    (and so the `studio health` process) alive until the driver gives up; a daemon
    thread is left behind instead.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: Any = None, error: BaseException | None = None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    def run() -> None:
        try:
            value, error = fn(), None
        except Exception as exc:  # the checks report; anything else is a bug to show
            value, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, value, error)
        except RuntimeError:  # the report was made without it and its loop is closed
            pass

    threading.Thread(target=run, daemon=True, name="health-check").start()
    try:
        return await asyncio.wait_for(future, timeout)
    except TimeoutError:
        return fallback


async def _unready(problem: str | None) -> dict[str, Any]:
    return {"status": UNHEALTHY, "error": problem}


def _timed_out(timeout: float) -> dict[str, Any]:
    return {
        "status": UNHEALTHY,
        "error": f"no answer within {timeout:g}s (HEALTH_PROBE_TIMEOUT_SECONDS x2)",
    }


def image_component(providers: dict[str, Any], probes: dict[str, Probe]) -> dict[str, Any]:
    """The image providers as one component, and each provider's probe in `providers`."""
    order: list[str] = list(providers.get("strategy", {}).get("order", []))
    order = [name for name in order if name != "preview"]
    for name, entry in providers.items():
        if name in ("strategy", "preview") or not isinstance(entry, dict):
            continue
        entry["in_order"] = bool(entry.get("available"))
        probe = probes.get(name)
        if probe is None:
            entry.update(available=False, status="unused", reason="not configured")
            continue
        entry.update(probe, available=probe["status"] == HEALTHY)
    preview = providers.get("preview", {})
    preview.update(status=DEGRADED if not order else "unused",
                   reason="stand-in: offline preview renderer" if not order else "not used")

    def why(name: str) -> str:
        return f"{name} ({probes[name]['reason']})"

    up = [n for n in order if probes.get(n, {}).get("status") == HEALTHY]
    down = [n for n in order if n not in up]
    if not order:
        status, reason = DEGRADED, "stand-in: no image provider configured, preview images"
    elif not up:
        status = UNHEALTHY
        reason = "no configured image provider answers: " + "; ".join(why(n) for n in down)
    elif down:
        status = DEGRADED
        reason = f"fallback in use: {'; '.join(why(n) for n in down)}; {', '.join(up)} answers"
    else:
        status, reason = HEALTHY, "answering: " + ", ".join(up)
    comfyui = probes.get("comfyui")
    if comfyui is not None and "comfyui" not in order:  # an endpoint set, not enabled
        if comfyui["status"] != HEALTHY:
            status, reason = UNHEALTHY, f"COMFYUI_ENDPOINT does not answer: {comfyui['reason']}"
        else:
            status = worst(status, DEGRADED)
            reason += "; COMFYUI_ENDPOINT is set but COMFYUI_ENABLED is not true: ComfyUI unused"
    return {"status": status, "reason": reason}


def hooks_component(hooks: dict[str, Any], probe: Probe | None) -> dict[str, Any]:
    if hooks.get("stand_in"):
        reason = "stand-in: template hooks (ANTHROPIC_API_KEY not set)"
        return {"status": DEGRADED, "reason": reason}
    if probe is not None:
        hooks["probe"] = probe
        if probe["status"] != HEALTHY:
            return {"status": DEGRADED,
                    "reason": f"Anthropic {probe['reason']}: template hooks stand in"}
    if hooks.get("breaker_open"):
        return {"status": DEGRADED, "reason": "Anthropic breaker open: template hooks stand in"}
    return {"status": HEALTHY, "reason": "Anthropic answers"}


def moderation_component(moderation: dict[str, Any], probe: Probe | None) -> dict[str, Any]:
    if moderation.get("stand_in"):
        reason = "stand-in: local rule-based moderation, text only (OPENAI_API_KEY not set)"
        return {"status": DEGRADED, "reason": reason}
    if probe is not None:
        moderation["probe"] = probe
        if probe["status"] != HEALTHY:
            return {"status": UNHEALTHY,
                    "reason": f"OpenAI {probe['reason']}: checked pieces are held for review"}
    return {"status": HEALTHY, "reason": "OpenAI answers"}


def storage_component(storage: dict[str, Any], probe: Probe | None) -> dict[str, Any]:
    if storage.get("status") == "misconfigured":
        return {"status": UNHEALTHY, "reason": str(storage.get("error", "misconfigured"))}
    if storage.get("status") == UNHEALTHY:
        return {"status": UNHEALTHY, "reason": str(storage.get("error", "unhealthy"))}
    if probe is not None:
        storage["probe"] = probe
        return {"status": probe["status"], "reason": probe["reason"]}
    if storage.get("stand_in"):
        return {"status": DEGRADED, "reason": "stand-in: local-folder store"}
    return {"status": HEALTHY, "reason": "ok"}


def _component(check: dict[str, Any], healthy_reason: str = "ok") -> dict[str, Any]:
    status = check.get("status")
    if status == HEALTHY:
        return {"status": HEALTHY, "reason": str(check.get("warning") or healthy_reason)}
    return {"status": UNHEALTHY, "reason": str(check.get("error") or status)}


async def health_report_async(
    settings: Settings | None = None, prefect_api_url: str | None = None
) -> dict[str, Any]:
    """The report, every probe and check at once (see the module docstring)."""
    from studio.db.schema_check import schema_problem
    from studio.hooks.registry import hook_writer_status
    from studio.moderation.registry import moderator_status
    from studio.providers.build import provider_availability
    from studio.storage.registry import storage_status

    s = settings or get_settings()
    timeout, timeout_error = probe_timeout()
    budget = 2 * timeout  # a check that reads the database may also count rows
    probing = asyncio.ensure_future(run_probes(timeout, prefect_api_url))
    # first: is the schema there? (reading a database without it would create its file)
    no_answer = str(_timed_out(timeout)["error"])
    problem = await in_daemon_thread(lambda: schema_problem(s), timeout, no_answer)
    ready = problem is None
    database, templates, budgets, storage = await asyncio.gather(
        in_daemon_thread(lambda: database_check(s), budget, _timed_out(timeout))
        if ready else _unready(problem),
        in_daemon_thread(template_check, budget, _timed_out(timeout))
        if ready else _unready("no templates: the database has no studio schema"),
        in_daemon_thread(lambda: budget_check(s, read_spend=ready), budget, _timed_out(timeout)),
        in_daemon_thread(
            lambda: storage_status(s, count_pending=ready), budget, _timed_out(timeout)
        ),
    )
    probes = await probing
    checks: dict[str, Any] = {
        "database": database,
        "template_library": templates,
        "providers": provider_availability(),
        "hooks": hook_writer_status(),
        "moderation": moderator_status(),
        "r2_storage": storage,
        "budgets": budgets,
    }
    components: dict[str, dict[str, Any]] = {
        "database": _component(database, "reachable, schema at head"),
        "template_library": _component(
            checks["template_library"], f"{checks['template_library'].get('templates')} templates"
        ),
        "images": image_component(checks["providers"], probes),
        "hooks": hooks_component(checks["hooks"], probes.get("anthropic")),
        "moderation": moderation_component(checks["moderation"], probes.get("openai")),
        "storage": storage_component(storage, probes.get("storage")),
        "budgets": _component(budgets),
    }
    for name in ("comfyui", "modal", "replicate"):
        if name in probes:
            components[name] = {"status": probes[name]["status"], "reason": probes[name]["reason"]}
    if "prefect_api" in probes:
        checks["prefect_api"] = probes["prefect_api"]
        components["prefect_api"] = {
            "status": probes["prefect_api"]["status"], "reason": probes["prefect_api"]["reason"]
        }
    if timeout_error:
        components["health_probes"] = {"status": UNHEALTHY, "reason": timeout_error}
    overall = worst(*(c["status"] for n, c in components.items() if n in OVERALL))
    return {
        "status": overall,
        "checks": checks,
        "components": components,
        "probe_timeout_seconds": timeout,
        "template_library": checks["template_library"],
    }


def health_report(
    settings: Settings | None = None, prefect_api_url: str | None = None
) -> dict[str, Any]:
    """`health_report_async` for a synchronous caller (the CLI), also inside a running
    event loop (then on a worker thread with its own loop)."""
    report = health_report_async(settings, prefect_api_url)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(report)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, report).result()
