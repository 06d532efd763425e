"""A module the warm-process tests run as `__main__` in a fork (tests/faults/test_warm_runs.py).

It says what it got (its environment's PREFECT__WARM_SAY, working directory, parent), then does what
WARM_DO says: `exit:<code>`, `kill:<signal>` (dies of it), `term` (waits for SIGTERM and
exits 7), `hang` (writes its pid to PREFECT__WARM_PID_FILE and sleeps); with
PREFECT__WARM_LINGER (a path) a thread the exit waits for, as Prefect's log workers, goes
on 5 s after the module ends, then says "drained" and writes that path; it imports
PREFECT__WARM_IMPORTS first, saying whether it was imported already; with
PREFECT__WARM_GC it says how many objects the collector leaves alone (frozen) and whether
it collects at all.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
from pathlib import Path

said = os.environ.get("PREFECT__WARM_SAY")
print(f"said {said} in {os.getcwd()} parent {os.getppid()}", flush=True)
print("to stderr", file=sys.stderr, flush=True)
if wanted := os.environ.get("PREFECT__WARM_IMPORTS"):
    already = wanted in sys.modules
    __import__(wanted)
    print(f"{wanted} already {already}", flush=True)
if os.environ.get("PREFECT__WARM_GC"):
    print(f"frozen {gc.get_freeze_count()} enabled {gc.isenabled()}", flush=True)
if linger := os.environ.get("PREFECT__WARM_LINGER"):
    def drain() -> None:
        time.sleep(5)
        print("drained", flush=True)
        Path(linger).write_text("drained")

    threading.Thread(target=drain).start()  # not a daemon: the process's exit waits
do = os.environ.get("PREFECT__WARM_DO", "exit:0")
if pid_file := os.environ.get("PREFECT__WARM_PID_FILE"):
    with open(pid_file, "w") as out:
        out.write(str(os.getpid()))
if do.startswith("exit:"):
    sys.exit(int(do.split(":")[1]))
if do.startswith("kill:"):
    os.kill(os.getpid(), int(do.split(":")[1]))
if do == "term":
    def stop(*_: object) -> None:
        print("got SIGTERM", flush=True)
        sys.exit(7)

    signal.signal(signal.SIGTERM, stop)
    print("waiting", flush=True)
    time.sleep(60)
if do == "hang":
    time.sleep(60)
