"""`studio limits`: the per-provider Prefect global concurrency limits.

`studio limits apply` creates or resizes one limit per image provider from the
*_MAX_CONCURRENT settings (the ceiling), so the caps hold across every process that
runs batches, records in the studio database that the ceiling is in force again (an
operator's manual cap is cleared, and the command says so), and creates, updates or
deletes the rate limits (`REPLICATE_RPS`, `ANTHROPIC_RPM`). `studio limits show` prints,
per provider, the ceiling, the limit in force on Prefect (the fleet lowers it when the
provider throttles and raises it back: issue 20), the slots in use, a manual cap if
any and the last change (`5 -> 3 throttled 12s ago, Retry-After 10s`); `--json` for
scripts. Both talk to the operator's server (PREFECT_API_URL, else 127.0.0.1:4200)
with its credential (PREFECT_API_AUTH_STRING); no server or a refused credential: one
line naming the URL, exit 1. A bad `*_MAX_CONCURRENT`, `REPLICATE_RPS` or
`ANTHROPIC_RPM`: one line naming it, exit 2, before the server is asked anything.
Without a usable studio database (DATABASE_URL, `studio init`) they still work on
Prefect and warn in one line that no record is read or written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from cli.output import console, err, print_json, refuse

if TYPE_CHECKING:
    from deployments.limits_view import LimitView
    from studio.db.provider_pace import Sessions
    from studio.providers.rate_settings import RateSettings
    from studio.providers.settings import ProviderSettings

limits_app = typer.Typer(help="Per-provider global concurrency limits.", no_args_is_help=True)
T = TypeVar("T")


def _on_server(work: Callable[..., Awaitable[T]]) -> T:
    """Run `work(client)` on the operator's server; exit 1 in one line if it cannot."""
    from deployments.api import CredentialRefused, ServerUnreachable, server_client

    async def run() -> T:
        async with server_client() as client:
            return await work(client=client)

    try:
        return asyncio.run(run())
    except (ServerUnreachable, CredentialRefused) as exc:
        err.print(f"[red]error[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None


def _settings() -> tuple[ProviderSettings, RateSettings]:
    """The ceilings and rates, or exit 2 naming the bad variable (nothing asked yet)."""
    from pydantic import ValidationError

    from studio.providers.rate_settings import load_rate_settings
    from studio.providers.settings import ProviderSettings
    from studio.request import BatchRequestError

    try:
        providers = ProviderSettings()
        rates = load_rate_settings()
    except BatchRequestError as exc:
        refuse(exc)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str((error.get("loc") or ("provider settings",))[0]).upper()
        refuse(BatchRequestError(field, str(error.get("msg", "invalid value"))))
    return providers, rates


def _sessions() -> tuple[Sessions | None, str | None]:
    """The studio database's sessions, or None and the one line saying why not (printed
    by `_warn` once the server answered: an unreachable server stays one line)."""
    from studio.db.engine import session_scope
    from studio.db.schema_check import schema_problem

    problem = schema_problem()
    return (session_scope, None) if problem is None else (None, problem)


def _warn(problem: str | None, doing: str) -> None:
    """One line on stderr saying what is not done without the database."""
    if problem is not None:
        err.print(f"[yellow]warning[/yellow] {escape(problem)}; {doing}",
                  highlight=False, soft_wrap=True)


@limits_app.command("apply")
def apply() -> None:
    """Put each `provider:<name>` limit back at its ceiling (*_MAX_CONCURRENT), clearing
    a manual cap, and make the rate limits match REPLICATE_RPS / ANTHROPIC_RPM."""
    from deployments.concurrency_limits import apply_and_record
    from deployments.rate_limits import apply_rate_limits

    providers, rates = _settings()
    sessions, problem = _sessions()

    async def work(client: Any) -> tuple[list[Any], dict[str, str]]:
        done = await apply_and_record(client, providers, sessions)
        return done, await apply_rate_limits(client, rates)

    done, rate_done = _on_server(work)
    _warn(problem, "limits applied on Prefect only: no manual cap cleared, no history")
    for applied in done:
        console.print(applied.line(), highlight=False, soft_wrap=True)
    for name, what in rate_done.items():
        console.print(f"{name}: {what}", highlight=False, soft_wrap=True)
    cleared = [a for a in done if a.manual_cap_cleared is not None]
    if cleared:
        console.print(
            "Manual caps cleared: the fleet may raise "
            + ", ".join(f"{a.provider} up to {a.ceiling}" for a in cleared)
            + " again (set a lower limit on Prefect to cap it by hand).",
            highlight=False, soft_wrap=True,
        )


def _cell(view: LimitView, now: datetime) -> list[str]:
    """One table row: limit, ceiling, current, in use, manual cap, last change."""
    if view.kind == "rate":
        ceiling = (
            f"{view.variable}={view.configured:g}" if view.configured is not None
            else f"{view.variable} unset"
        )
        if not view.exists:
            current = "missing (run `studio limits apply`)"
        else:
            current = f"{view.limit} ({view.per_second or 0:g}/s)"
            if view.configured is None:
                current += ", stale (run `studio limits apply`)"
        return [view.name, ceiling, current, _n(view.in_use), "-", ""]
    if view.kind == "retry-after":
        return [view.name, _n(view.ceiling), "no limit", "-", "-", view.change_text(now)]
    if not view.exists:
        current = "missing (run `studio limits apply`)"
    else:
        current = str(view.limit) + ("" if view.active else " (inactive)")
    return [view.name, _n(view.ceiling), current, _n(view.in_use), _n(view.manual_cap),
            view.change_text(now) or "none"]


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


@limits_app.command("show")
def show(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (for scripts)")] = False,
) -> None:
    """Per provider: the ceiling, the limit in force on Prefect, the slots in use, a
    manual cap and the last change; then the rate limits."""
    from deployments.limits_view import read_limits_view

    providers, rates = _settings()
    sessions, problem = _sessions()

    async def work(client: Any) -> list[LimitView]:
        return await read_limits_view(client, providers, sessions, rates)

    views = _on_server(work)
    _warn(problem, "no ceiling record, manual cap or history shown")
    now = datetime.now(UTC)
    if as_json:
        print_json({"limits": [v.to_json(now) for v in views],
                    "database": sessions is not None})
        return
    table = Table("limit", "ceiling", "current", "in use", "manual cap", "last change")
    for view in views:
        table.add_row(*_cell(view, now))
    console.print(table)
