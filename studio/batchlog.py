"""The spec's log lines, in its exact formats, to the console and to `logs/app.log`.

The spec's grep/awk/Python recipes ("Real-time Metrics", "Parsing for Analysis",
Common Issues) read these lines, so the wording here is an interface: change it and
the studio's dashboards break.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from studio.settings import get_settings, reload_settings

LOGGER_NAME = "studio"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

log = logging.getLogger("studio.batch")

STEP_NAMES = {
    1: "Template Selection",
    2: "Image Generation",
    3: "Hook Generation",
    4: "Safety Check",
    5: "Storage Upload",
    6: "Database Save",
    7: "Statistics Calculation",
}


#: How the spec's lines begin (its "Log format" and the Common Issues greps): at INFO,
#: the console shows these and nothing else. The other INFO detail (`provider_attempt`,
#: "Hook writer | Using: ...", Prefect's task-run state lines) scrolls the progress bar
#: away; it stays in app.log and the run logs. Matched on the message template, as the
#: spec's recipes match on the text, so no call site needs to mark its line.
SPEC_LINE_PREFIXES = (
    "[BATCH START]",
    "[STEP ",
    "[BATCH COMPLETE]",
    "[BATCH FAILED]",
    "Hook generation summary",
    "Safety check summary",
    "Content rejected",
    "Resuming batch",
)


#: what may not appear raw inside one log line: C0/C1 controls (newline, CR, ESC, NUL...),
#: DEL and the Unicode line/paragraph separators
_LINE_BREAKERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """`text` with every control character escaped (`\\n`, `\\x1b`...): one log line.

    Why: values interpolated into a log line (an avatar's name, a hook, a provider's
    error) could otherwise start a new line, e.g. forge a `[BATCH COMPLETE]` that the
    spec's recipes would count. New input is validated at entry; this covers rows that
    predate validation and text from providers.
    """
    return _LINE_BREAKERS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class OneLineFormatter(logging.Formatter):
    """app.log's formatter: a record's message is one line whatever it interpolates; a
    traceback (exc_info, stack_info) still follows on its own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


def _neutralise(record: logging.LogRecord) -> None:
    """Replace a record's message by its one-line form when it holds a control character
    (the record is shared: app.log and the run logs then get the same escaped text)."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format: logging reports it when a handler formats it
        return
    safe = one_line(message)
    if safe != message:
        record.msg, record.args = safe, None


def console_worthy(record: logging.LogRecord) -> bool:
    """The console filter: warnings and errors from any logger, the spec's lines, and
    everything when STUDIO_VERBOSE (`--verbose`) is set. A function, so logging takes it
    as a filter as is; app.log and the run logs have their own handlers, unfiltered.

    It also makes the record's message one line (see `one_line`): a terminal must not
    take a name's newline or escape sequence from the console either."""
    _neutralise(record)
    if record.levelno >= logging.WARNING:
        return True
    if str(record.msg).startswith(SPEC_LINE_PREFIXES):
        return True
    return get_settings().verbose


def show_everything_on_console() -> None:
    """`--verbose`: set STUDIO_VERBOSE for this process (and what it starts), as a worker
    would have it in its environment, and re-read the settings the filter consults."""
    os.environ["STUDIO_VERBOSE"] = "1"
    reload_settings()


def configure_logging(log_file: Path, level: str = "INFO") -> None:
    """Attach one file handler for `log_file` to the `studio` logger (idempotent).

    The console side is Prefect's: `studio` is registered as an extra Prefect logger,
    so the same lines also reach the run's logs in the Prefect UI.
    """
    root = logging.getLogger(LOGGER_NAME)
    root.setLevel(level.upper())
    target = str(Path(log_file).resolve())
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler) and handler.baseFilename == target:
            return
    for handler in [h for h in root.handlers if getattr(h, "_studio_file", False)]:
        root.removeHandler(handler)
        handler.close()
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(target, encoding="utf-8")
    file_handler.setFormatter(OneLineFormatter(FILE_FORMAT))
    file_handler._studio_file = True  # type: ignore[attr-defined]
    root.addHandler(file_handler)


def batch_start(avatar_id: str, pieces: int, platform: str) -> str:
    return one_line(f"[BATCH START] Avatar: {avatar_id}, Pieces: {pieces}, Platform: {platform}")


def step_line(number: int, details: str, seconds: float, extra: str = "") -> str:
    parts = [f"[STEP {number}/7] {STEP_NAMES[number]}"]
    if details:
        parts.append(details)
    parts.append(f"Duration: {seconds:.2f}s")
    if extra:
        parts.append(extra)
    return one_line(" | ".join(parts))


def batch_complete(avatar_id: str, seconds: float, pieces: int, cost_usd: float) -> str:
    return one_line(
        f"[BATCH COMPLETE] Avatar: {avatar_id} | Total Duration: {seconds:.2f}s"
        f" | Pieces: {pieces} | Cost: ${cost_usd:.2f}"
    )


def batch_failed(avatar_id: str, seconds: float, pieces: int, cost_usd: float, reason: str) -> str:
    """A batch below min_success_ratio: the [BATCH COMPLETE] fields, then why, so the
    spec's `[BATCH COMPLETE]` recipes count only batches that delivered."""
    return one_line(
        f"[BATCH FAILED] Avatar: {avatar_id} | Total Duration: {seconds:.2f}s"
        f" | Pieces: {pieces} | Cost: ${cost_usd:.2f} | Reason: {reason}"
    )
