"""The `studio` console script: start the local Prefect API first, then the CLI.

WHY: a batch command's first half second goes to importing typer, rich and the
request models; the local Prefect server (engine/local_server.py) takes ~5 s to boot
and is what a cold command waits for, so it is started before any of that, from the
command line alone. Everything else is `cli.app`.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

#: commands that run (or read) a batch on the local Prefect API: started first, it boots
#: while the command imports
BATCH_COMMANDS = (("batch", "run"), ("batch", "resume"), ("batch", "status"), ("demo",),
                  ("storage-sync",))


def runs_a_batch(argv: list[str]) -> bool:
    words = [arg for arg in argv if not arg.startswith("-")]
    return any(tuple(words[: len(command)]) == command for command in BATCH_COMMANDS)


def main() -> None:
    if runs_a_batch(sys.argv[1:]) and "--help" not in sys.argv:
        from engine import local_server

        local_server.ensure_started()  # the command finds it running (or booting)
    from cli.app import app

    try:
        app()
    except SystemExit as stop:
        _exit_without_teardown(stop.code)
        raise
    except Exception as exc:  # what no command expected: one line, exit 1
        from cli.output import unexpected_error

        code = unexpected_error(exc)
        _exit_without_teardown(code)
        raise SystemExit(code) from None
    _exit_without_teardown(0)


def _exit_without_teardown(code: int | str | None) -> None:
    """End the process once everything registered for exit has run, skipping the
    interpreter's teardown of its ~1,400 modules (0.6 s of a 4 s command, measured with
    an atexit probe): Prefect drains its log and event workers in atexit handlers, and
    logging flushes `app.log` in one, so those run first. With a non-daemon thread still
    alive (work Python would wait for), the normal exit is kept."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate()
           if t is not threading.main_thread()):
        return
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
