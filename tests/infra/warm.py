"""The warm processes (engine/warm_server.py) of a test's folder: found and stopped."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import psutil


def warm_processes(folder: Path) -> list[psutil.Process]:
    """Warm processes whose socket is in `folder` (they run detached, not under a worker)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        line = " ".join(process.info["cmdline"] or [])
        if "engine.warm_server" in line and str(folder) in line:
            found.append(process)
    return found


def stop_warm_processes(folder: Path) -> None:
    """Kill them and whatever runs they still hold (a test's leftover)."""
    for process in warm_processes(folder):
        with contextlib.suppress(psutil.Error):
            for child in process.children(recursive=True):
                child.send_signal(signal.SIGKILL)
            process.send_signal(signal.SIGKILL)
