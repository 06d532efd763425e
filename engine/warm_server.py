"""The warm process: Prefect and the flows imported once, a fork per flow run.

WORKAROUND (PrefectHQ/prefect#14423, #21944): see engine/warm_start.py, its client, for
why. Started by the first flow-run process that finds none (detached, in its own
session), as `python -m engine.warm_server <socket> <key>`; one per worker host,
environment and code version. It:

- imports what a flow run imports (`PRELOAD`) and nothing that starts a thread or opens a
  connection, so a fork is safe; then listens on a Unix socket in the user's private
  folder, taking connections from its own user only (SO_PEERCRED);
- per request (a module, the run's environment and working directory, and its three
  standard streams as file descriptors) forks a child that takes them over, refreshes
  Prefect's settings from the run's environment, and runs the module as `__main__` the
  way engine/flow_run_process.py runs it cold;
- answers `{"pid": N}`, then `{"code": C}` when the child's run is over: when the
  engine has returned (`detach`: the child gives back the worker's streams and goes on
  draining its logs and events on its own), or when the child ends before that
  (negative: the signal that killed it); kills the child if the client's connection
  closes before its run is over (the worker killed the process it watches);
- exits when idle for `STUDIO_WARM_IDLE_SECONDS` (900 s), when the code changed, or when
  its socket is no longer its own (a newer warm process took the name), once its
  children have ended; it notes each run and its end in `<key>.log` beside the socket.

Single-threaded (a selector loop), so a fork never copies a lock another thread holds.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engine.warm_start import HEADER, code_stamp

#: what a deployment run of this project imports before its work
PRELOAD = (
    "prefect.engine",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.deployments.steps.core",
    "prefect.runner.storage",
    "flows.content_batch",
    "flows.scheduled",
    "flows.health_check",
    "flows.crash_recovery",
    "flows.storage_sync",
    "flows.review",
)
IDLE_SECONDS = 900.0
#: how often it checks whether the code it imported is still the checkout's
CODE_CHECK_SECONDS = 10.0
#: how often the loop looks for its own idleness (and for ended children where a kernel
#: has no pidfd: on Linux >= 5.3 a child's end wakes the loop at once, see `exit_fd`)
TICK_SECONDS = 0.2
#: a request's header and body must arrive within this
REQUEST_TIMEOUT_SECONDS = 5.0


def log(message: str) -> None:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
    print(f"{stamp} warm {os.getpid()}: {message}", flush=True)


def exit_fd(pid: int) -> int | None:
    """A file descriptor that becomes readable when child `pid` ends (Linux's pidfd), so
    its client hears of the end at once instead of at the loop's next tick: the worker
    frees its slot, and starts the next waiting run, that much sooner. None where the
    kernel or Python has none (the tick still reaps)."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def preload() -> None:
    """Import what a run imports; a module that fails is left to the run (cold errors
    then read as they would without a warm process)."""
    from engine import ssl_reuse

    ssl_reuse.install()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:
            log(f"preload of {name} failed ({type(exc).__name__}); left to the runs")
    from studio.providers.tls import client_context
    from studio.storage.r2 import load_s3_model

    client_context()  # the provider clients' TLS context, built once for every fork
    load_s3_model()  # a run's first S3 client (its staging) then skips botocore's loading
    freeze_heap()


def freeze_heap() -> None:
    """Move everything imported so far out of the collector's reach, garbage first.

    Why: a fork shares the warm process's ~120 MB heap copy-on-write, and a fork's first
    full collection walked all of it, writing each object's header: every page copied,
    ~0.5 s with the GIL held, a third of a batch's fixed CPU, in the middle of its first
    database write (`register-batch` took 0.5 s in `bench/bench_fleet.py --timeline`, 10 ms
    after). Frozen objects are never collected, so the garbage goes first. What the
    Python docs advise for fork without exec (`gc.freeze`).
    """
    gc.collect()
    gc.freeze()


@dataclass
class Run:
    conn: socket.socket
    pid: int
    flow_run: str
    ended_fd: int | None = None  # exit_fd(pid)
    done_fd: int | None = None  # the child writes its run's exit code here (`detach`)
    detached: bool = False  # its client has its code and is gone: the child only drains


def _peer_is_us(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    _pid, uid, _gid = (int.from_bytes(creds[i:i + 4], sys.byteorder) for i in (0, 4, 8))
    return uid == os.getuid()


def _read_request(conn: socket.socket) -> tuple[dict[str, object], list[int]]:
    conn.settimeout(REQUEST_TIMEOUT_SECONDS)
    header, fds, _flags, _addr = socket.recv_fds(conn, HEADER.size, 3)
    if not header and not fds:
        raise EOFError  # a client that only checked this process is alive
    if len(header) != HEADER.size or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("a request without its header and three streams")
    (size,) = HEADER.unpack(header)
    body = b""
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("a request cut short")
        body += chunk
    return json.loads(body), fds


class WarmServer:
    def __init__(self, socket_path: Path, key: str, idle_seconds: float) -> None:
        self.path, self.key, self.idle_seconds = socket_path, key, idle_seconds
        self.selector = selectors.DefaultSelector()
        self.runs: dict[int, Run] = {}  # pid -> run
        self.last_active = time.monotonic()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.inode = 0
        self.stamp = code_stamp()
        self.stale = False
        self.unlearnable: set[str] = set()
        self.stamp_checked = time.monotonic()

    def listen(self) -> None:
        """Bind beside the final name and rename onto it: a client never meets a socket
        that does not accept yet, and a second warm process replaces the first."""
        staging = self.path.with_suffix(f".{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        self.listener.bind(str(staging))
        self.listener.listen(64)
        self.listener.setblocking(False)
        os.replace(staging, self.path)
        self.inode = self.path.stat().st_ino
        with contextlib.suppress(FileNotFoundError):
            self.path.with_suffix(".spawn").unlink()
        self.selector.register(self.listener, selectors.EVENT_READ, None)

    def ours(self) -> bool:
        try:
            return self.path.stat().st_ino == self.inode
        except FileNotFoundError:
            return False

    def outdated(self) -> bool:
        """Whether the code changed since it was imported (checked every few seconds): a
        run would fork the old code; the next run starts a new warm process anyway."""
        now = time.monotonic()
        if now - self.stamp_checked >= CODE_CHECK_SECONDS:
            self.stamp_checked = now
            if code_stamp() != self.stamp:
                self.stale = True
        return self.stale

    def serve(self) -> None:
        accepting = True
        while True:
            for key, _mask in self.selector.select(TICK_SECONDS):
                if key.data is None:
                    self.accept()
                elif isinstance(key.data, int):
                    self.client_spoke(key.data)
                elif isinstance(key.data, tuple):
                    self.run_ended(key.data[1])
                # else a child's exit_fd: reaped just below
            self.reap()
            if accepting:
                idle = time.monotonic() - self.last_active > self.idle_seconds
                if idle or not self.ours() or self.outdated():
                    accepting = False  # no new runs; ours end before it does
                    self.retire()
            if not accepting and not self.runs:
                break
        log("exits")

    def retire(self) -> None:
        """Take no more runs: the socket goes (when still ours), so a client never
        waits on a listener nobody accepts from."""
        self.selector.unregister(self.listener)
        if self.ours():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.listener.close()

    def accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        self.last_active = time.monotonic()
        try:
            if not _peer_is_us(conn):
                raise PermissionError("a connection from another user")
            request, fds = _read_request(conn)
        except EOFError:
            conn.close()
            return
        except (OSError, ValueError) as exc:
            log(f"request refused ({type(exc).__name__}: {exc})")
            conn.close()
            return
        env = request.get("env") or {}
        flow_run = str(env.get("PREFECT__FLOW_RUN_ID", "-")) if isinstance(env, dict) else "-"
        gc.freeze()  # see `freeze_heap`: what the server made since is shared too
        done_read, done_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            run_child(request, fds, [self.selector.fileno(), self.listener.fileno(),  # type: ignore[attr-defined]
                                     conn.fileno(), done_read,
                                     *(run.conn.fileno() for run in self.runs.values()),
                                     *(fd for run in self.runs.values()
                                       for fd in (run.ended_fd, run.done_fd) if fd is not None)],
                      self.path, done_write)
        for fd in (*fds, done_write):
            os.close(fd)
        run = self.runs[pid] = Run(conn, pid, flow_run, exit_fd(pid), done_read)
        if run.ended_fd is not None:
            self.selector.register(run.ended_fd, selectors.EVENT_READ, "ended")
        self.selector.register(done_read, selectors.EVENT_READ, ("done", pid))
        log(f"flow run {flow_run}: pid {pid}")
        try:
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        except OSError:
            pass  # its client is gone: client_spoke/reap deal with it
        conn.setblocking(False)
        self.selector.register(conn, selectors.EVENT_READ, pid)

    def client_spoke(self, pid: int) -> None:
        """The client sends nothing after its request: readable means it closed."""
        run = self.runs.get(pid)
        if run is None:
            return
        try:
            data = run.conn.recv(1)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            log(f"flow run {run.flow_run}: its process went away, killing pid {pid}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self.selector.unregister(run.conn)

    def run_ended(self, pid: int) -> None:
        """The child wrote its run's exit code (`detach`): the client gets it and ends, so
        the worker frees the run's slot while the child drains its logs and events. An
        end of file without a code (the child died first) is left to `reap`."""
        run = self.runs.get(pid)
        if run is None or run.done_fd is None:
            return
        try:
            data = os.read(run.done_fd, 32)
        except OSError:
            data = b""
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(run.done_fd)
        os.close(run.done_fd)
        run.done_fd = None
        try:
            code = int(data)
        except ValueError:
            return
        run.detached = True
        log(f"flow run {run.flow_run}: pid {pid} ran ({code}), its client released")
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(run.conn)
        with contextlib.suppress(OSError):
            run.conn.setblocking(True)
            run.conn.sendall(json.dumps({"code": code}).encode() + b"\n")
        run.conn.close()

    def reap(self) -> None:
        while self.runs:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run = self.runs.pop(pid, None)
            if run is None:
                continue
            self.last_active = time.monotonic()
            code = os.waitstatus_to_exitcode(status)
            cpu = usage.ru_utime + usage.ru_stime  # the run's CPU, its children's included
            log(f"flow run {run.flow_run}: pid {pid} ended ({code}), cpu {cpu:.2f} s")
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(run.conn)
            for fd in (run.ended_fd, run.done_fd):
                if fd is not None:
                    with contextlib.suppress(KeyError, ValueError):
                        self.selector.unregister(fd)
                    os.close(fd)
            if not run.detached:
                with contextlib.suppress(OSError):
                    run.conn.setblocking(True)
                    run.conn.sendall(json.dumps({"code": code}).encode() + b"\n")
                run.conn.close()
            self.learn(pid)

    def learn(self, pid: int) -> None:
        """Import what the ended run had to import (tests/faults/test_warm_runs.py), so
        the next fork finds it done. A module that starts a thread on import would make
        forking unsafe: then this process takes no more runs."""
        noted = learned_file(self.path, pid)
        try:
            names = [n for n in noted.read_text().splitlines() if n and n not in sys.modules]
        except FileNotFoundError:
            return
        finally:
            with contextlib.suppress(FileNotFoundError):
                noted.unlink()
        names = [n for n in names if n not in self.unlearnable]
        started, failed = time.monotonic(), 0
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:  # left to the runs, as before; not tried again
                self.unlearnable.add(name)
                failed += 1
        if names:
            freeze_heap()  # what the imports left: garbage collected, the rest frozen
            log(f"learned {len(names) - failed} modules from pid {pid} "
                f"({failed} failed) in {time.monotonic() - started:.2f} s")
        if threading.active_count() > 1:
            log("an import started a thread: forking is no longer safe, retiring")
            self.stale = True


def learned_file(socket_path: Path, pid: int) -> Path:
    return socket_path.with_name(f"{socket_path.stem}.{pid}.modules")


def _note_imports(before: set[str], socket_path: Path) -> None:
    """Tell the warm process which modules this run had to import (it imports them
    before the next fork): written beside the socket, atomically."""
    new = sorted(name for name in set(sys.modules) - before if not name.startswith("__"))
    target = learned_file(socket_path, os.getpid())
    staging = target.with_suffix(".tmp")
    staging.write_text("\n".join(new))
    os.replace(staging, target)


def detach(code: int, done_write: int, log_fd: int) -> None:
    """The run is over (the engine returned: its final state is set, its last lines are
    printed): give the client its exit code now and the worker's streams back.

    Why: what a process does after its engine returns (Prefect's log and event workers
    drain, then atexit) took 0.01-0.25 s per run in which the worker counted the run
    against its `--limit` and held the next run back (issue 20). The worker waits for
    its process to exit and for the end of its output pipes, which this child holds too:
    they are swapped for the warm process's log, and the code goes to the warm process,
    which hands it to the client (`WarmServer.run_ended`). The drain goes on here.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.write(done_write, str(code).encode())
    os.close(done_write)


def run_child(
    request: dict[str, object], fds: list[int], inherited: list[int], socket_path: Path,
    done_write: int,
) -> None:
    """In the forked child: become the run's process, run its module, give the client
    its code (`detach`), drain and exit."""
    code = 1
    before = set(sys.modules)
    log_fd = os.dup(1)  # the warm process's log: the child's output once detached
    try:
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in inherited:
            with contextlib.suppress(OSError):
                os.close(fd)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        env = request["env"]
        assert isinstance(env, dict)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
        os.chdir(str(request["cwd"]))
        sys.path[0] = str(request["cwd"])  # as `python -m` in that folder would have it
        sys.argv = sys.argv[:1]  # the engine reads a run id from argv[1] before the env
        import prefect.context

        prefect.context.refresh_global_settings_context()
        from engine.flow_run_process import run_module

        code = run_module(str(request["module"]))
    except BaseException:
        import traceback

        with contextlib.suppress(Exception):
            traceback.print_exc()
    with contextlib.suppress(Exception):  # else the client has it when the child ends
        detach(code, done_write, log_fd)
    with contextlib.suppress(Exception):  # learning is best effort
        _note_imports(before, socket_path)
    from engine.flow_run_process import finish

    finish(code)


def main() -> None:
    socket_path, key = Path(sys.argv[1]), sys.argv[2]
    idle = float(os.environ.get("STUDIO_WARM_IDLE_SECONDS", IDLE_SECONDS))
    server = WarmServer(socket_path, key, idle)
    try:
        preload()
        server.listen()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            socket_path.with_suffix(".spawn").unlink()
        raise
    log(f"ready for {key} in {os.getcwd()}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve()
    finally:  # SIGTERM too: the socket goes, so the next run does not count it as live
        if server.ours():
            with contextlib.suppress(FileNotFoundError):
                socket_path.unlink()


if __name__ == "__main__":
    main()
