"""The flow-run process a process worker starts for the project's deployments.

WORKAROUND, set as the deployments' `command` job variable (prefect.yaml):
`<the venv's python> -m engine.flow_run_process`. Four costs of a deployment run that
an in-process batch does not pay (issue 20, measured on the cluster harness):

- Prefect 3.9's process worker, when no `command` is configured, starts
  `prefect.runner._workspace_supervisor`, which imports Prefect once more (0.84 s of
  CPU) to prepare a uv workspace this project does not use, then starts
  `python -m prefect.engine` under it. With a `command` configured the worker starts
  that command directly (prefect/workers/process.py, `_command_configured`), as Prefect
  up to 3.8 always did; on_crashed and on_cancellation hooks then run in the worker
  with the flow loaded from the deployment (prefect/runner/_hook_runner.py) instead of
  in a workspace hook subprocess. No upstream issue found for the supervisor's cost.
- every Prefect API client builds its own SSL context: `engine/ssl_reuse.py`, installed
  here before the engine's first client (PrefectHQ/prefect#19106).
- the engine's suspension observer, stopped and joined before the engine returns:
  `engine/suspension_observer.py`, installed here.
- interpreter finalization: once the engine has returned, threading's exit hooks
  (where Prefect drains its log and event workers) and the atexit functions (logging's
  flush and close among them) run as at a normal exit, then the process ends with
  `os._exit`: tearing down the ~2,000 modules a batch imports cost 0.3-0.75 s of CPU
  and nothing of ours needs it.

`command()` is the build step prefect.yaml runs at `prefect deploy` time: this
interpreter's absolute path (a worker's PATH need not hold the venv), the same
host-path assumption as the set_working_directory pull step `prefect deploy` writes.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import runpy
import shlex
import sys
import threading
import warnings
from typing import Any

MODULE = "engine.flow_run_process"
ENGINE = "prefect.engine"


def command() -> dict[str, str]:
    """prefect.yaml build step (`id: flow-run-process`): `{{ flow-run-process.command }}`."""
    return {"command": f"{shlex.quote(sys.executable)} -m {MODULE}"}


def _exit_code(code: Any) -> int:
    """What the interpreter would exit with for `SystemExit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def finish(code: int) -> None:
    """Everything a normal exit runs that matters (non-daemon threads joined and
    threading's exit hooks, where Prefect's log and event workers drain; then atexit),
    then `os._exit`, skipping the module teardown."""
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # what Py_Finalize calls first
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed or broken pipe: nothing to say
                stream.flush()
        os._exit(code)


def run_module(module: str) -> int:
    """Run `module` as `__main__` (the engine reads the run's id from the environment);
    the exit code the interpreter would have ended with."""
    from engine import ssl_reuse, start_claim, suspension_observer

    ssl_reuse.install()
    suspension_observer.install()  # the run's end does not wait for its observer to stop
    start_claim.claim_at_start()  # a batch: its wave counts it from now (see the module)
    # A warm process imported the module already (engine/warm_server.py preloads the
    # engine), so runpy warns that running it as __main__ may be unpredictable, once per
    # run, into the worker's log. Expected here: the engine keeps no state at import
    # that its __main__ block relies on being its own.
    warnings.filterwarnings(
        "ignore", message=re.escape(f"'{module}' found in sys.modules"), category=RuntimeWarning
    )
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        return _exit_code(exit_.code)
    except BaseException:  # printed as the interpreter would, exit 1
        import traceback

        traceback.print_exc()
        return 1
    return 0


def main() -> None:
    from engine import warm_start

    code = warm_start.run_warm(ENGINE)
    if code is not None:
        warm_start.exit_like(code)
    finish(run_module(ENGINE))


if __name__ == "__main__":
    main()
