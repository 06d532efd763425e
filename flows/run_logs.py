"""The `studio.*` log records of a run reach that run's logs in the Prefect UI.

Prefect copies its API log handler onto the loggers named in
PREFECT_LOGGING_EXTRA_LOGGERS only while it sets up logging, which in a worker's
flow-run process happens before this project is imported: setting the variable at
import (studio/runtime_env.py) is too late there, so worker-run batches sent none of
the spec's lines to the API (upstream: PrefectHQ/prefect#17879, "extra loggers not
writing to prefect API in prefect 3"). So each flow attaches Prefect's own
`APILogHandler` to the `studio` logger when it starts, once per process; the file
handler of `logs/app.log` (studio/batchlog.py) is untouched and keeps the spec's format.
"""

from __future__ import annotations

import logging

from prefect.context import get_run_context
from prefect.exceptions import MissingContextError
from prefect.logging.handlers import APILogHandler

from studio.batchlog import LOGGER_NAME


def _in_a_run(record: logging.LogRecord) -> bool:
    """Only records logged inside a flow or task run have a run to go to; the others
    (a CLI command, a thread started without the run's context) stay in app.log and
    the console, without Prefect's "missing flow run" warning."""
    if getattr(record, "flow_run_id", None):
        return True
    try:
        get_run_context()
    except MissingContextError:
        return False
    return True


def attach_run_logs(level: int = logging.INFO) -> None:
    """Send `studio.*` records at `level` and above to the current run's Prefect logs.

    Idempotent: a handler already there (this call before, or Prefect's own when the
    variable was set in time) is kept, so no record is sent twice.
    """
    logger = logging.getLogger(LOGGER_NAME)
    if any(isinstance(handler, APILogHandler) for handler in logger.handlers):
        return
    handler = APILogHandler(level=level)
    handler.addFilter(_in_a_run)
    logger.addHandler(handler)
