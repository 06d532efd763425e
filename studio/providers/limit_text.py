"""How a provider limit's change reads to an operator (issue 20).

Why one module: `studio limits show` (cli/limits.py), the batch's artifact
(flows/batch_artifact.py) and the README say the same thing the same way:
`5 -> 3 throttled 12s ago, Retry-After 10s`, `3 -> 4 recovered`, `2 -> 5 applied`,
`5 -> 2 manual` (an operator's own cap seen on Prefect). Pure text: no Prefect, no
database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class Change(Protocol):
    """What is read of a change (studio.db.provider_pace.LimitChange has it)."""

    at: datetime
    from_limit: int
    to_limit: int
    reason: str
    status: int | None
    retry_after: float | None


def seconds_text(seconds: float) -> str:
    """A Retry-After as the log lines print it: `10s`, `2.5s` (`:g`)."""
    return f"{seconds:g}s"


def ago(seconds: float) -> str:
    """A short age: `12s`, `5m`, `3h`, `2d` (rounded down; never negative)."""
    whole = max(0, int(seconds))
    if whole < 90:
        return f"{whole}s"
    if whole < 90 * 60:
        return f"{whole // 60}m"
    if whole < 48 * 3600:
        return f"{whole // 3600}h"
    return f"{whole // 86400}d"


def change_text(change: Change, now: datetime | None = None) -> str:
    """`5 -> 3 throttled 12s ago, Retry-After 10s`; without `now`, no age
    (`5 -> 3 throttled, Retry-After 10s`). A throttle's status is named when it is not
    a plain 429 (`throttled (529)`)."""
    reason = change.reason
    if reason == "throttled" and change.status not in (None, 429):
        reason = f"throttled ({change.status})"
    text = f"{change.from_limit} -> {change.to_limit} {reason}"
    if now is not None:
        text += f" {ago((now - change.at).total_seconds())} ago"
    if change.retry_after is not None:
        text += f", Retry-After {seconds_text(change.retry_after)}"
    return text
