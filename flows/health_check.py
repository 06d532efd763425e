"""A flow that runs the spec's health check on a schedule, so the Prefect UI shows
(and automations can alert on) a degraded database, cache or provider."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import acreate_markdown_artifact

from studio.health import health_report


class Unhealthy(Exception):
    pass


@flow(name="health-check")
async def health_check() -> dict:
    report = health_report()
    lines = [f"# Health: {report['status']}", ""]
    for name, check in report["checks"].items():
        lines.append(f"- **{name}**: {check}")
    await acreate_markdown_artifact(markdown="\n".join(lines), key="studio-health")
    if report["status"] != "healthy":
        raise Unhealthy(str(report["checks"]))
    return report
