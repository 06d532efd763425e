"""The flow-run process's client of a warm process (engine/warm_server.py): what a
deployment run pays before its work, cut from a fresh interpreter to a fork.

WORKAROUND (PrefectHQ/prefect#14423, import time; #21944, the process worker's fixed
SUBMITTING -> RUNNING latency): a process worker starts a new interpreter per flow run,
and importing Prefect alone costs ~1.4 s of CPU on the project's 2-core machines, the
project's flows ~1 s more, before the engine asks the API anything. Issue 20 asks for at
most 1.5 s of fixed CPU per deployment-run batch and 1.5 s from submission to
`[BATCH START]`: no fresh interpreter that imports Prefect meets either. So the
`command` a worker starts (engine/flow_run_process.py) first asks a warm process, one
per worker host and environment that has imported Prefect and the flows already, to
fork a child that runs `prefect.engine` with this process's environment, working
directory and standard streams; this process stays what the worker watches:

- it forwards SIGTERM, SIGINT, SIGHUP and SIGQUIT to the child (the worker's cancel and
  kill), and ends with the child's exit code, or dies of the child's signal, so the
  worker's crash and cancel handling see what they would see of the engine itself;
- if it is killed (SIGKILL from the worker's escalation), the warm process sees its
  connection close and kills the child, so no run outlives what the worker watches;
- if no warm process answers, it starts one in the background (detached) and runs this
  run the cold way: the first run after a change pays what every run paid before.

This module is imported by every flow-run process before anything else, so it imports
the standard library only. The warm process is keyed by everything a fork would
otherwise get wrong: the interpreter, the environment (but for the `PREFECT__*` names
Prefect sets per run: the run's id, control channel, worker), and the code (the newest
modification time of the project's and the venv's Python files): a deploy, `git pull`
or `pip install` starts a new warm process, and the old one exits. A key's first run
only notes the key, its second starts the warm process (so a one-off environment never
pays for one), the runs after it are forked. `STUDIO_WARM_RUNS=false` turns it off
(every run cold).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the project's packages whose code a warm process has imported
PACKAGES = ("flows", "tasks", "blocks", "deployments", "studio", "engine", "cli")
#: names Prefect sets per flow run, which a fork takes from the run, not the warm process
PER_RUN_PREFIX = "PREFECT__"
#: the signals a worker sends to stop a run, passed on to the child
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
#: names a shell sets per command (not part of what a run shares with others)
NOISE = frozenset({"_"})
#: a warm process that has not answered its spawn within this may be spawned again
SPAWN_STALE_SECONDS = 120.0
#: at most this many warm processes per user: each holds ~120 MB and cost ~2.5 s of CPU
MAX_WARM = 6
#: how long a client waits for the warm process to accept and fork
CONNECT_TIMEOUT_SECONDS = 5.0
HEADER = struct.Struct("!I")


def enabled(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """On unless `STUDIO_WARM_RUNS` says no; Linux only (fork with Prefect's libraries
    loaded, SO_PEERCRED, passing file descriptors: what the project's workers run on)."""
    if not sys.platform.startswith("linux"):
        return False
    return env.get("STUDIO_WARM_RUNS", "true").strip().lower() not in {"0", "false", "no", "off"}


def warm_dir() -> Path:
    """The folder of this user's warm processes: private (0700), under TMPDIR."""
    base = os.environ.get("STUDIO_WARM_DIR") or os.path.join(
        tempfile.gettempdir(), f"studio-warm-{os.getuid()}"
    )
    return Path(base)


def _private(folder: Path) -> bool:
    """Whether `folder` exists (made if not) as this user's alone: a socket there runs
    code as us, so another user's or a shared folder is never used."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700, parents=True)
    info = folder.stat()
    return info.st_uid == os.getuid() and info.st_mode & 0o077 == 0


def _sources() -> Iterator[Path]:
    for package in PACKAGES:
        yield ROOT / package
    for entry in sys.path:  # the venv's site-packages: a pip install changes its folder
        if entry.endswith("site-packages"):
            yield Path(entry)


def code_stamp() -> int:
    """The newest modification time among the project's Python files and the venv's
    site-packages folder (an install or removal changes it)."""
    newest = 0
    stack = list(_sources())
    while stack:
        folder = stack.pop()
        try:
            newest = max(newest, folder.stat().st_mtime_ns)
            if folder.name == "site-packages":
                continue
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        if entry.name != "__pycache__":
                            stack.append(Path(entry.path))
                    elif entry.name.endswith(".py"):
                        newest = max(newest, entry.stat().st_mtime_ns)
        except OSError:
            continue
    return newest


def warm_key(env: dict[str, str] | os._Environ[str]) -> str:
    """What a warm process must share with a run to fork it (see the module's docstring).

    Not the working directory: a process worker starts each run in a new temporary one
    (the deployment's pull step then moves to the checkout), so the child moves to the
    run's and puts it first on sys.path, as `python -m` would have."""
    shared = sorted(
        (k, v) for k, v in env.items() if not k.startswith(PER_RUN_PREFIX) and k not in NOISE
    )
    fingerprint = json.dumps([sys.executable, code_stamp(), shared])
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:24]


def paths(key: str) -> dict[str, Path]:
    folder = warm_dir()
    return {
        "socket": folder / f"{key}.sock",
        "spawn": folder / f"{key}.spawn",
        "seen": folder / f"{key}.seen",
        "log": folder / f"{key}.log",
    }


def _live_sockets() -> int:
    """Warm processes answering in this user's folder; a socket nobody listens on (its
    process was killed) is removed."""
    live = 0
    for path in warm_dir().glob("*.sock"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            live += 1
        except ConnectionRefusedError:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        except OSError:
            live += 1  # not ours to judge: count it
        finally:
            sock.close()
    return live


def _spawn(key: str, where: dict[str, Path]) -> None:
    """Start the warm process for `key` in the background: on the key's second run (a
    one-off environment, such as a test's, never pays for one), unless one is starting
    or `MAX_WARM` are running."""
    if not where["seen"].exists():
        where["seen"].touch(mode=0o600)
        return
    with contextlib.suppress(FileNotFoundError):
        if time.time() - where["spawn"].stat().st_mtime < SPAWN_STALE_SECONDS:
            return
        where["spawn"].unlink()
    if _live_sockets() >= MAX_WARM:
        return
    try:
        fd = os.open(where["spawn"], os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return  # another run is starting it
    os.close(fd)
    env = {k: v for k, v in os.environ.items() if not k.startswith(PER_RUN_PREFIX)}
    with open(where["log"], "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "engine.warm_server", str(where["socket"]), key],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True, close_fds=True,
        )


def _connect(where: dict[str, Path]) -> socket.socket | None:
    if not where["socket"].exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_TIMEOUT_SECONDS)
    try:
        sock.connect(str(where["socket"]))
    except ConnectionRefusedError:  # its process died without removing it
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            where["socket"].unlink()
        return None
    except OSError:
        sock.close()
        return None
    return sock


class _Lines:
    """JSON lines from the warm process."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, b""

    def next(self) -> dict[str, int] | None:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


def run_warm(module: str) -> int | None:
    """Run `module` as `__main__` in a child of the warm process; its exit code, or
    None when no warm process took it (the caller runs it cold)."""
    if not enabled():
        return None
    cwd = os.getcwd()
    try:
        where = paths(warm_key(os.environ))
        if not _private(warm_dir()):
            return None
        sock = _connect(where)
        if sock is None:
            _spawn(where["socket"].stem, where)
            return None
    except OSError:
        return None
    with sock:
        request = json.dumps({"module": module, "env": dict(os.environ), "cwd": cwd}).encode()
        try:
            socket.send_fds(sock, [HEADER.pack(len(request))], [0, 1, 2])
            sock.sendall(request)
            lines = _Lines(sock)
            started = lines.next()
        except OSError:
            return None  # it went away before forking: cold
        if not started or "pid" not in started:
            return None
        sock.settimeout(None)
        return _follow(int(started["pid"]), lines)


def _follow(pid: int, lines: _Lines) -> int:
    """Pass the worker's signals on to the child and wait for its exit code."""

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    try:
        ended = lines.next()
    except OSError:
        ended = None
    if ended is None:  # the warm process died: the child lives on, wait for it
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return 1  # its code is lost with the warm process
            time.sleep(0.2)
    return int(ended["code"])


def exit_like(code: int) -> None:
    """End this process as the child ended: its code, or killed by its signal."""
    if code < 0:
        signum = -code
        if signum not in (signal.SIGKILL, signal.SIGSTOP):  # these cannot be caught anyway
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        time.sleep(1)  # a blocked or ignored signal: fall through to an exit code
        code = 128 + signum
    os._exit(code)
