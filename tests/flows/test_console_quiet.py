"""The console of `studio batch run` holds the progress bars, the spec's lines and
warnings; the detail (provider attempts, Prefect's task-run state lines) stays in
`logs/app.log` and the run logs, or reaches the console with `--verbose`.

The command runs in a fresh interpreter, as an operator runs it, so Prefect's own
console handler (not pytest's capture) is what is read.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

from prefect.logging.handlers import PrefectConsoleHandler
from prefect.settings import get_current_settings

from engine.run_logs import quiet_console

ROOT = Path(__file__).resolve().parents[2]
SPEC_STARTS = ("[BATCH START] Avatar: ", "Hook generation summary", "Safety check summary")


def _studio(*args: str, verbose_env: bool = False) -> str:
    """`python -m cli.app ...` against the test Prefect API; stdout and stderr."""
    env = {key: value for key, value in os.environ.items() if key != "STUDIO_VERBOSE"}
    env["PREFECT_API_URL"] = str(get_current_settings().api.url)
    env["PYTHONPATH"] = str(ROOT)
    if verbose_env:
        env["STUDIO_VERBOSE"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "cli.app", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _assert_spec_lines(console: str) -> None:
    for start in SPEC_STARTS:
        assert start in console, (start, console)
    for n in range(1, 8):
        assert f"[STEP {n}/7] " in console, (n, console)
    assert "[BATCH COMPLETE] Avatar: " in console, console


def test_console_shows_the_spec_lines_and_app_log_keeps_the_detail(
    studio_env, demo_avatar
) -> None:
    console = _studio("batch", "run", "--avatar", "demo", "--pieces", "3")
    _assert_spec_lines(console)
    assert "batch steps" in console and "published" in console  # progress bar, summary
    for detail in ("provider_attempt", "Finished in state", "Beginning flow run",
                   "Beginning subflow run", "Hook writer | Using", "Stand-in used"):
        assert detail not in console, (detail, console)
    assert console.count("\n") < 40, console
    app_log = Path(studio_env.log_file).read_text()
    assert app_log.count(" INFO studio.providers provider_attempt piece=") >= 3, app_log
    assert " INFO studio.hooks Hook writer | Using: " in app_log
    assert " INFO studio.batch Stand-in used | " in app_log
    assert " INFO studio.batch [STEP 1/7] Template Selection | " in app_log


def test_verbose_console_shows_everything(studio_env, demo_avatar) -> None:
    console = _studio("batch", "run", "--avatar", "demo", "--pieces", "3", "--verbose")
    _assert_spec_lines(console)
    assert console.count("provider_attempt piece=") >= 3, console
    assert "Finished in state Completed()" in console
    assert "Hook writer | Using: " in console


def test_studio_verbose_env_shows_everything(studio_env, demo_avatar) -> None:
    """What a worker (or `make demo VERBOSE=1`) sets instead of the option."""
    console = _studio("batch", "run", "--avatar", "demo", "--pieces", "2", verbose_env=True)
    assert "provider_attempt piece=" in console and "Finished in state" in console


def test_a_warning_of_the_batch_reaches_the_console(studio_env, demo_avatar) -> None:
    console = _studio(
        "batch", "run", "--avatar", "demo", "--pieces", "2",
        "--prompt", "portrait of a schoolgirl", "--prompt", "city walk at dusk",
        "--tier", "capa1", "--tier", "capa1",
    )
    rejected = [line for line in console.splitlines() if "Content rejected | Reason: " in line]
    assert rejected and all("WARNING" in line for line in rejected), console
    assert "provider_attempt" not in console


def test_quiet_console_passes_warnings_of_any_logger_and_drops_info_detail() -> None:
    """The filter itself, on a Prefect console handler of its own: a foreign library's
    warning passes, Prefect's state lines and the studio's INFO detail do not."""
    stream = io.StringIO()
    handler = PrefectConsoleHandler(stream=stream)
    logger = logging.getLogger("tests.console_quiet")
    logger.addHandler(handler)
    try:
        quiet_console()
        quiet_console()  # idempotent
        assert handler.filters.count(handler.filters[0]) == 1 and len(handler.filters) == 1

        def emit(name: str, level: int, message: str) -> None:
            handler.handle(logging.makeLogRecord(
                {"name": name, "levelno": level, "levelname": logging.getLevelName(level),
                 "msg": message}
            ))

        emit("somelib.client", logging.WARNING, "retrying a slow call")
        emit("prefect.task_runs", logging.INFO, "Finished in state Completed()")
        emit("studio.providers", logging.INFO, "provider_attempt piece=p outcome=ok")
        emit("studio.batch", logging.INFO, "[STEP 1/7] Template Selection | Duration: 0.10s")
        emit("prefect.flow_runs", logging.ERROR, "Finished in state Failed('boom')")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "retrying a slow call" in text
    assert "[STEP 1/7] Template Selection" in text
    assert "Failed('boom')" in text
    assert "provider_attempt" not in text and "Completed()" not in text
