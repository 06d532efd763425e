"""Defaults for Prefect's environment that this project relies on.

Set before Prefect is imported (the CLI, tests, `serve`): `studio` becomes an extra
Prefect logger, so the spec's log lines reach the run logs in the Prefect UI as well as
`logs/app.log`, without warnings when the same code runs outside a flow (e.g.
`studio health`). Explicit environment values always win.

Not relied on: in a worker's flow-run process Prefect has set up logging before this
runs, so engine/run_logs.py attaches Prefect's API log handler itself.
"""

from __future__ import annotations

import os

PREFECT_DEFAULTS = {
    "PREFECT_LOGGING_EXTRA_LOGGERS": "studio",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def apply_prefect_defaults() -> None:
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
