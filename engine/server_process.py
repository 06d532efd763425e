"""The slot reconcile beside `studio server`, as a child process that dies with the server.

Only beside a server whose lease storage loses leases on a restart (an operator's
`PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=...memory`): `studio server` starts none on
the filesystem or Redis storage, whose expired leases Prefect's repossessor frees
(cli/server.py; engine/slot_reconcile.py checks the server's settings again).

WHY (issue 16, finding 11): `studio server` ran Prefect's server as a child and the
reconcile as a thread of its own process. Killed with -9, the parent died and the child
kept serving the port with no reconcile beside it; a restart could not bind. Now
`studio server` execs Prefect's server (`os.execve`: the pid the operator started *is*
the server, so a kill of it leaves nothing serving) and runs the reconcile here, in a
child started before the exec with Linux's `prctl(PR_SET_PDEATHSIG, SIGTERM)`: the kernel
sends it SIGTERM when the process that started it (the server, after the exec) ends,
however it ends, -9 included. A reconcile without its server would only log failures;
a server without its reconcile is what the issue found.

Why PR_SET_PDEATHSIG (via ctypes) and not a scheduled deployment: the reconcile must run
with the server's own credential even before anything is deployed, and it is a
Linux-only guarantee we can name. Elsewhere (no prctl) the child notices its parent is
gone at its next round (its parent pid changes) and exits.

Run as `python -m engine.server_process <every-seconds>` with PREFECT_API_URL and
PREFECT_API_AUTH_STRING in its environment (never on the command line: `ps` shows it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A `preexec_fn` for the child: SIGTERM when `parent_pid` ends (Linux), and exit at
    once if it already ended between the fork and this call."""

    def preexec() -> None:
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(0)

    return preexec


def start_reconcile(api_url: str, auth: str | None, every: float,
                    env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The reconcile child, against `api_url` with the server's credential `auth`."""
    child_env = {**env, "PREFECT_API_URL": api_url}
    if auth:
        child_env["PREFECT_API_AUTH_STRING"] = auth
    else:
        child_env.pop("PREFECT_API_AUTH_STRING", None)
    return subprocess.Popen(  # this interpreter, our own module
        [sys.executable, "-m", "engine.server_process", str(every)],
        env=child_env, stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent(os.getpid()),  # a plain prctl call, safe after fork
    )


async def _reconcile_while_parent_lives(every: float) -> None:
    import asyncio

    from engine.lease_census import LeaseCensus
    from engine.slot_reconcile import reconcile_forever

    parent = os.getppid()
    loop = asyncio.create_task(reconcile_forever(LeaseCensus(), every=every))
    while not loop.done() and os.getppid() == parent:  # the fallback where prctl is not
        await asyncio.sleep(every)
    loop.cancel()


def main(argv: list[str]) -> int:
    from studio.runtime_env import apply_prefect_defaults

    apply_prefect_defaults()  # studio.* records on the console, as the server prints
    import asyncio

    from studio import batchlog
    from studio.settings import get_settings

    settings = get_settings()
    batchlog.configure_logging(settings.log_file, settings.log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's; it ends us
    every = float(argv[0]) if argv else 15.0
    asyncio.run(_reconcile_while_parent_lives(every))
    return 0


if __name__ == "__main__":  # pragma: no cover - the child's entry point
    sys.exit(main(sys.argv[1:]))
