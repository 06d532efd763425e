"""A flow that runs the spec's health check on a schedule, so the Prefect UI shows
(and automations can alert on) a degraded database, cache or provider.

The check probes every configured provider and store (studio/health.py). The run ends
Failed when the set-up is `unhealthy` (the "content batch failed"-style automations and
the runs list show it), and Completed when it is `healthy` or `degraded` (batches work,
on a fallback or a stand-in: its state message says which).

The artifact is markdown tables an operator reads at a glance: one row per component
with its status and reason, one row per check with its details, and one row per image
provider with its probe.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import acreate_markdown_artifact
from prefect.settings import PREFECT_API_URL
from prefect.states import Completed

from studio.health import health_report_async


class Unhealthy(Exception):
    pass


def _value(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "—"
    return str(value).replace("|", "\\|")


def _details(check: dict[str, Any], prefix: str = "") -> list[str]:
    parts = []
    for key, value in check.items():
        if key == "status" and not prefix:
            continue
        if isinstance(value, dict):
            parts.extend(_details(value, f"{prefix}{key}."))
        else:
            parts.append(f"{prefix}{key}: {_value(value)}")
    return parts


def _status(check: dict[str, Any]) -> str:
    if "status" in check:
        return str(check["status"])
    return "stand-in" if check.get("stand_in") else "ok"


def health_markdown(report: dict[str, Any]) -> str:
    checks: dict[str, Any] = report["checks"]
    lines = [f"# Health: {report['status']}", ""]
    components: dict[str, Any] = report.get("components", {})
    if components:
        lines += ["| Component | Status | Reason |", "| --- | --- | --- |"]
        for name, component in components.items():
            lines.append(
                f"| {name} | {component['status']} | {_value(component.get('reason'))} |"
            )
        lines.append("")
    lines += [
        "| Check | Status | Details |",
        "| --- | --- | --- |",
    ]
    for name, check in checks.items():
        if name == "providers":
            continue
        details = "; ".join(_details(check)) if isinstance(check, dict) else _value(check)
        status = _status(check) if isinstance(check, dict) else ""
        lines.append(f"| {name} | {status} | {details} |")
    providers = {
        k: v
        for k, v in checks.get("providers", {}).items()
        if isinstance(v, dict) and k != "strategy"
    }
    if providers:
        columns = [
            "available", "status", "reason", "configured", "position", "max_concurrent",
            "price_usd", "stand_in",
        ]
        lines += ["", "## Image providers", ""]
        lines.append("| Provider | " + " | ".join(c.replace("_", " ") for c in columns) + " |")
        lines.append("| --- |" + " --- |" * len(columns))
        for name, provider in providers.items():
            row = [_value(provider.get(c)) for c in columns]
            lines.append(f"| {name} | " + " | ".join(row) + " |")
        strategy = checks["providers"].get("strategy")
        if isinstance(strategy, dict):
            order = " → ".join(strategy.get("order", [])) or "—"
            lines += ["", f"Routing: **{strategy.get('name', '?')}**, order {order}"]
    return "\n".join(lines)


def _not_healthy(report: dict[str, Any]) -> str:
    """`name: reason` of every component that is not healthy, worst first."""
    order = {"unhealthy": 0, "degraded": 1}
    parts = sorted(
        (c for c in report.get("components", {}).items() if c[1]["status"] in order),
        key=lambda c: order[c[1]["status"]],
    )
    return "; ".join(f"{name} {c['status']}: {c.get('reason')}" for name, c in parts)


@flow(name="health-check")
async def health_check() -> Any:
    report = await health_report_async(prefect_api_url=PREFECT_API_URL.value())
    await acreate_markdown_artifact(markdown=health_markdown(report), key="studio-health")
    if report["status"] == "unhealthy":
        raise Unhealthy(_not_healthy(report) or "unhealthy")
    if report["status"] == "degraded":  # batches work: a fallback or a stand-in in use
        return Completed(message=f"degraded: {_not_healthy(report)}"[:2000], data=report)
    return report
