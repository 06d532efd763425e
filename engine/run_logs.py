"""The `studio.*` log records of a run reach that run's logs in the Prefect UI.

Prefect copies its API log handler onto the loggers named in
PREFECT_LOGGING_EXTRA_LOGGERS only while it sets up logging, which in a worker's
flow-run process happens before this project is imported: setting the variable at
import (studio/runtime_env.py) is too late there, so worker-run batches sent none of
the spec's lines to the API (upstream: PrefectHQ/prefect#17879, "extra loggers not
writing to prefect API in prefect 3"). So each flow attaches Prefect's own
`APILogHandler` to the `studio` logger when it starts, once per process; the file
handler of `logs/app.log` (studio/batchlog.py) is untouched and keeps the spec's format.

The console is Prefect's too (its `PrefectConsoleHandler` on the root logger, which the
`studio.*` records and Prefect's own flow- and task-run state lines reach). It gets
`studio.batchlog.console_worthy` as a filter, so a batch's console holds the progress
bars, the spec's lines and warnings, not a line per provider attempt and per task run.
Prefect's settings have no per-record switch for that (PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL
would hide the spec's INFO lines too), and a logging.yml of our own would replace
Prefect's whole configuration and, like the extra loggers, come too late in a worker.
"""

from __future__ import annotations

import logging

from prefect.context import get_run_context
from prefect.exceptions import MissingContextError
from prefect.logging.handlers import APILogHandler, PrefectConsoleHandler

from studio.batchlog import LOGGER_NAME, console_worthy


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


def quiet_console() -> None:
    """Filter every Prefect console handler of this process with `console_worthy`.

    Idempotent and cheap (one pass over the loggers); called with attach_run_logs at
    import of `flows` and again at each flow start, so a handler Prefect rebuilt
    (a non-incremental logging set-up) is filtered again before the run logs much.
    """
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, PrefectConsoleHandler) and console_worthy not in handler.filters:
                handler.addFilter(console_worthy)


def attach_run_logs(level: int = logging.INFO) -> None:
    """Send `studio.*` records at `level` and above to the current run's Prefect logs,
    and quiet the console (quiet_console).

    Idempotent: a handler already there (this call before, or Prefect's own when the
    variable was set in time) is kept, so no record is sent twice.
    """
    quiet_console()
    logger = logging.getLogger(LOGGER_NAME)
    if any(isinstance(handler, APILogHandler) for handler in logger.handlers):
        return
    handler = APILogHandler(level=level)
    handler.addFilter(_in_a_run)
    logger.addHandler(handler)
