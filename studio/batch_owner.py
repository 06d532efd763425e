"""Which local process runs a batch, so `studio batch status` can tell a killed local
batch from a running one.

Why: a batch started by `studio batch run` (or `demo`, `batch resume`) runs in the
command's own process against the local Prefect API. Killed with -9, nothing tells
Prefect or the row: the run stays `Running` and the row `running` forever. The command
therefore leaves a small marker (`$STUDIO_HOME/running/<batch id>.json`: host, pid, the
pid's start time) while it runs the batch and removes it when the batch ends; a marker
whose process is gone on this host means the batch was interrupted, and `batch resume`
finishes it. Batches run by workers leave no marker: Prefect's heartbeats and the
crash-recovery automation cover them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from studio.settings import get_settings


@dataclass(frozen=True)
class LocalOwner:
    """The process that ran (or runs) a batch on this host."""

    batch_id: str
    run_id: str | None
    host: str
    pid: int
    pid_started: str | None  # /proc start time: a reused pid is another process
    since: str

    def alive(self) -> bool:
        if self.host != socket.gethostname():
            return True  # another host's process: not ours to judge
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return self.pid_started is None or _start_time(self.pid) in (None, self.pid_started)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22, counted after "(comm)"


def _marker(batch_id: str) -> Path:
    return get_settings().studio_home / "running" / f"{batch_id}.json"


def claim(batch_id: str, run_id: str | None) -> LocalOwner:
    """Mark `batch_id` as run by this process (overwrites a dead owner's marker)."""
    pid = os.getpid()
    owner = LocalOwner(
        batch_id=batch_id,
        run_id=run_id,
        host=socket.gethostname(),
        pid=pid,
        pid_started=_start_time(pid),
        since=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    path = _marker(batch_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(owner)))
    return owner


def release(batch_id: str) -> None:
    """The batch ended in this process (whatever the ending): forget the marker."""
    with contextlib.suppress(FileNotFoundError):
        _marker(batch_id).unlink()


def owner_of(batch_id: str) -> LocalOwner | None:
    """The marker of a batch run locally, or None (not local, or it ended)."""
    try:
        data = json.loads(_marker(batch_id).read_text())
        return LocalOwner(**data)
    except (OSError, ValueError, TypeError):
        return None
