"""The spec's alert thresholds ("Alert Thresholds"), evaluated on a finished batch.

The flow turns each breached threshold into a Prefect event (`studio.alert.<name>`),
and the automations in `deployments/automations.py` notify on them, so a studio gets
the spec's alerts without a separate monitoring stack.
"""

from __future__ import annotations

from dataclasses import dataclass

from studio.types import BatchResult


@dataclass(frozen=True)
class Alert:
    name: str
    level: str
    message: str
    value: float
    threshold: float


@dataclass(frozen=True)
class Thresholds:
    batch_seconds: float = 600.0
    provider_success_ratio: float = 0.80
    hook_error_ratio: float = 0.10
    safety_rejection_ratio: float = 0.20
    cache_hit_percent: float = 50.0
    database_seconds: float = 5.0


def evaluate(
    result: BatchResult,
    *,
    hook_failures: int = 0,
    cache_hit_percent: float | None = None,
    thresholds: Thresholds = Thresholds(),
) -> list[Alert]:
    alerts: list[Alert] = []
    t = thresholds
    if result.total_seconds > t.batch_seconds:
        alerts.append(
            Alert(
                "batch-slow",
                "warning",
                "batch took longer than 10 min; investigate delays",
                result.total_seconds,
                t.batch_seconds,
            )
        )
    requested = max(result.requested, 1)
    made = (result.requested - result.failed) / requested
    if made < t.provider_success_ratio:
        alerts.append(
            Alert(
                "provider-success-low",
                "warning",
                "image providers delivered too few pieces; check provider health",
                made,
                t.provider_success_ratio,
            )
        )
    checked = max(result.requested - result.failed, 1)
    if hook_failures / checked > t.hook_error_ratio:
        alerts.append(
            Alert(
                "hook-errors-high",
                "warning",
                "hook generation errors above 10%; LLM service issue",
                hook_failures / checked,
                t.hook_error_ratio,
            )
        )
    if result.rejected / checked > t.safety_rejection_ratio:
        alerts.append(
            Alert(
                "safety-rejections-high",
                "info",
                "safety rejections above 20%; monitor content tier",
                result.rejected / checked,
                t.safety_rejection_ratio,
            )
        )
    if cache_hit_percent is not None and cache_hit_percent < t.cache_hit_percent:
        alerts.append(
            Alert(
                "cache-hit-low",
                "debug",
                "template cache hit rate below 50%; analyze query patterns",
                cache_hit_percent,
                t.cache_hit_percent,
            )
        )
    db_seconds = result.step_seconds.get("database_save", 0.0)
    if db_seconds > t.database_seconds:
        alerts.append(
            Alert(
                "database-slow",
                "error",
                "database save above 5 s; connection pool issue",
                db_seconds,
                t.database_seconds,
            )
        )
    return alerts
