"""Flow-run processes forked from a warm process (engine/warm_start.py, engine/warm_server.py).

Real processes throughout: a client as the worker starts it (`python -c` calling
`run_warm`, the same call engine/flow_run_process.py makes), the warm process it starts
detached, and tests/warm_target.py as the module the fork runs (it says what environment,
folder and parent it got and exits, dies or waits as told). Each test has its own warm
folder (STUDIO_WARM_DIR), and stops the warm processes it started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from engine import warm_server, warm_start
from tests.infra.warm import stop_warm_processes, warm_processes
from tests.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
CLIENT = """
import sys
from engine.warm_start import exit_like, run_warm
code = run_warm("tests.warm_target")
if code is None:
    print("cold", flush=True)
    sys.exit(99)
exit_like(code)
"""




def warm_pids(folder: Path) -> list[int]:
    return [process.pid for process in warm_processes(folder)]


@pytest.fixture
def warm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    # a short path: a Unix socket's path holds at most 107 bytes
    folder = Path(tempfile.mkdtemp(prefix="sw-", dir="/tmp")) / "warm"
    monkeypatch.setenv("STUDIO_WARM_DIR", str(folder))
    monkeypatch.setenv("STUDIO_WARM_IDLE_SECONDS", "120")
    monkeypatch.delenv("STUDIO_WARM_RUNS", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    yield folder
    stop_warm_processes(folder)
    shutil.rmtree(folder.parent, ignore_errors=True)


def client(**per_run: str) -> subprocess.Popen[str]:
    """A flow-run process as the worker starts it; `per_run` are PREFECT__ names (what
    Prefect sets per run: they do not change which warm process serves it)."""
    env = {**os.environ, **{f"PREFECT__WARM_{k.upper()}": v for k, v in per_run.items()}}
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


def finished(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def sockets(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.sock")) if folder.exists() else []


def started(warm: Path) -> Path:
    """Two cold runs: the first notes the environment, the second starts its warm process."""
    for _ in range(2):
        assert finished(client())[:2] == (99, "cold\n")
    return wait_for("the warm process's socket", lambda: sockets(warm))[0]


def test_the_third_run_of_an_environment_is_forked_with_its_own_streams_and_code(warm):
    first = client()
    assert finished(first)[:2] == (99, "cold\n")
    assert not sockets(warm), "a warm process for an environment seen once"
    sock = started(warm)
    [server] = warm_pids(warm)

    code, out, err = finished(client(say="hello", do="exit:3"))

    assert code == 3
    assert out.startswith(f"said hello in {ROOT} parent {server}"), out
    assert "to stderr" in err
    log = sock.with_suffix(".log")
    assert "ready for" in log.read_text()
    wait_for("the fork's end in the log", lambda: "ended (3)" in log.read_text(), 10)
    assert sock.stat().st_mode & 0o077 == 0 or warm.stat().st_mode & 0o077 == 0


def test_the_client_ends_with_the_run_while_the_fork_drains(warm, tmp_path):
    """Once the module has returned (for a flow run: the engine, its final state set) the
    client gets the code and ends, with the worker's streams closed, while the fork goes
    on with what its exit waits for (Prefect's log and event workers draining; here a
    thread of 5 s), its output going to the warm process's log (issue 20: the worker
    counted the run against its --limit until that drain ended)."""
    sock = started(warm)
    drained, pid_file = tmp_path / "drained", tmp_path / "pid"

    code, out, _err = finished(client(do="exit:3", linger=str(drained), pid_file=str(pid_file)))

    assert code == 3  # the run's code, although the fork has not ended
    assert out.startswith("said"), out
    assert not drained.exists(), "the client waited for the fork's drain"
    assert psutil.pid_exists(int(pid_file.read_text()))
    log = sock.with_suffix(".log")
    assert "its client released" in log.read_text()
    wait_for("the fork's drain to finish", drained.exists, 20)
    wait_for("the fork to end", lambda: "ended (3)" in log.read_text(), 10)
    assert "drained" in log.read_text()  # said after the client went: in the warm log


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_fork_killed_by_a_signal_ends_its_client_by_the_same_signal(warm, signum):
    started(warm)
    code, _out, _err = finished(client(do=f"kill:{int(signum)}"))
    assert code == -int(signum)


def test_the_workers_sigterm_reaches_the_fork(warm):
    started(warm)
    process = client(do="term")
    assert process.stdout is not None
    wait_for("the fork to wait", lambda: "waiting" in process.stdout.readline())
    process.send_signal(signal.SIGTERM)
    code, out, _err = finished(process)
    assert (code, "got SIGTERM" in out) == (7, True)


def test_a_killed_client_takes_its_fork_with_it(warm, tmp_path):
    sock = started(warm)
    pid_file = tmp_path / "pid"
    process = client(do="hang", pid_file=str(pid_file))
    pid = int(wait_for("the fork's pid", lambda: pid_file.exists() and pid_file.read_text()))
    process.kill()
    process.wait()
    wait_for("the fork to be killed", lambda: not psutil.pid_exists(pid)
             or psutil.Process(pid).status() == "zombie", 10)
    assert "its process went away, killing pid" in sock.with_suffix(".log").read_text()


def pidfds_of(process: int) -> set[int]:
    """The processes `process` holds a pidfd of (Linux: a pidfd's fdinfo names its Pid)."""
    held = set()
    for info in Path(f"/proc/{process}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            for line in info.read_text().splitlines():
                if line.startswith("Pid:"):
                    held.add(int(line.split()[1]))
    return held


def _has_pidfd() -> bool:
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):  # Python or kernel (< 5.3) without it
        return False
    return True


@pytest.mark.skipif(not _has_pidfd(), reason="no pidfd here: the warm process's tick reaps")
def test_the_warm_process_hears_of_a_forks_end_through_a_pidfd_and_closes_it(warm, tmp_path):
    """A fork's end wakes the warm process at once (its pidfd is in the selector), not at
    its next idle tick: the worker's slot, and the next run, wait that much less."""
    started(warm)
    [server] = warm_pids(warm)
    pid_file = tmp_path / "pid"
    process = client(do="hang", pid_file=str(pid_file))
    pid = int(wait_for("the fork's pid", lambda: pid_file.exists() and pid_file.read_text()))
    assert pid in wait_for("a pidfd of the fork", lambda: pidfds_of(server))
    os.kill(pid, signal.SIGKILL)
    assert finished(process)[0] == -signal.SIGKILL
    assert pid not in pidfds_of(server)  # closed before its client was told the code


def test_another_environment_or_code_gets_another_warm_process(warm, monkeypatch, tmp_path):
    started(warm)
    monkeypatch.setenv("STUDIO_SOMETHING_ELSE", "1")
    assert finished(client())[:2] == (99, "cold\n")  # a new environment: noted, cold

    project = tmp_path / "project"
    (project / "flows").mkdir(parents=True)
    source = project / "flows" / "a.py"
    source.write_text("")
    monkeypatch.setattr(warm_start, "ROOT", project)
    monkeypatch.setattr(warm_start, "PACKAGES", ("flows",))
    before = warm_start.warm_key({"A": "1", "PREFECT__FLOW_RUN_ID": "x", "_": "a"})
    assert before == warm_start.warm_key({"A": "1", "PREFECT__FLOW_RUN_ID": "y", "_": "b"})
    os.utime(source, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert warm_start.warm_key({"A": "1"}) != before


def test_a_warm_process_whose_code_changed_retires(warm, monkeypatch):
    sock = started(warm)
    server = warm_server.WarmServer(sock.with_name("other.sock"), "other", 60)
    assert not server.outdated()
    server.stamp, server.stamp_checked = -1, float("-inf")
    assert server.outdated()


def test_an_idle_warm_process_exits_and_takes_its_socket(warm, monkeypatch):
    monkeypatch.setenv("STUDIO_WARM_IDLE_SECONDS", "1")
    sock = started(warm)
    wait_for("the idle warm process to exit", lambda: not warm_pids(warm), 30)
    assert not sock.exists()
    assert "exits" in sock.with_suffix(".log").read_text()


def test_a_dead_warm_processes_socket_is_cleared_and_the_run_goes_cold(warm):
    started(warm)
    [dead] = warm_pids(warm)
    os.kill(dead, signal.SIGKILL)
    wait_for("the warm process to die", lambda: not warm_pids(warm))
    assert finished(client())[:2] == (99, "cold\n")  # and it starts another one
    [new] = wait_for("a new warm process", lambda: warm_pids(warm))
    assert new != dead
    wait_for("its socket", lambda: sockets(warm))
    assert finished(client(do="exit:0"))[0] == 0


def test_no_warm_process_where_others_could_reach_it_or_when_switched_off(warm, monkeypatch):
    warm.mkdir(parents=True, mode=0o700)
    warm.chmod(0o755)
    for _ in range(3):
        assert finished(client())[:2] == (99, "cold\n")
    assert list(warm.iterdir()) == [] and not warm_pids(warm)

    warm.chmod(0o700)
    monkeypatch.setenv("STUDIO_WARM_RUNS", "false")
    for _ in range(3):
        assert finished(client())[:2] == (99, "cold\n")
    assert list(warm.iterdir()) == []


def test_at_most_max_warm_processes_and_dead_ones_do_not_count(warm, monkeypatch):
    warm.mkdir(parents=True, mode=0o700)
    listening = []
    for n in range(warm_start.MAX_WARM):  # others, alive
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(warm / f"busy{n}.sock"))
        sock.listen(8)
        listening.append(sock)
    for _ in range(3):
        assert finished(client())[:2] == (99, "cold\n")
    assert not warm_pids(warm)

    for sock in listening:  # they die without removing their sockets
        sock.close()
    assert finished(client())[:2] == (99, "cold\n")
    wait_for("a warm process once the dead are cleared", lambda: warm_pids(warm))
    assert not list(warm.glob("busy*.sock"))


def test_a_stopped_warm_process_takes_its_socket(warm):
    sock = started(warm)
    [pid] = warm_pids(warm)
    os.kill(pid, signal.SIGTERM)
    wait_for("the warm process to stop", lambda: not warm_pids(warm))
    assert not sock.exists()


def test_what_a_run_had_to_import_is_imported_before_the_next_fork(warm):
    sock = started(warm)
    code, out, _err = finished(client(imports="tests.warm_learn_module"))
    assert code == 0 and "tests.warm_learn_module already False" in out, out
    log = wait_for("the warm process to learn",
                   lambda: "learned" in (text := sock.with_suffix(".log").read_text()) and text)
    assert "learned" in log
    code, out, _err = finished(client(imports="tests.warm_learn_module"))
    assert code == 0 and "tests.warm_learn_module already True" in out, out


def test_a_fork_never_collects_the_warm_processs_heap(warm):
    """The objects a fork inherits are frozen: its collections walk only what the run
    made, so they copy none of the shared pages (engine/warm_server.py, `freeze_heap`);
    what the warm process learned after a run is frozen for the next fork too."""
    sock = started(warm)
    code, out, _err = finished(client(gc="1", imports="tests.warm_learn_module"))
    assert code == 0, out
    first = int(out.split("frozen ")[1].split()[0])
    assert first > 100_000, out  # Prefect and the flows, preloaded: not a handful
    assert "enabled True" in out, out  # the run's own garbage is still collected

    wait_for("the warm process to learn",
             lambda: "learned" in sock.with_suffix(".log").read_text())
    _code, out, _err = finished(client(gc="1"))
    assert int(out.split("frozen ")[1].split()[0]) > first, out


def test_a_warm_process_that_learned_a_thread_starting_import_takes_no_more_runs(warm):
    sock = started(warm)
    code, _out, _err = finished(client(imports="tests.warm_thread_module"))
    assert code == 0
    wait_for("the warm process to retire", lambda: not warm_pids(warm))
    log = sock.with_suffix(".log").read_text()
    assert "forking is no longer safe, retiring" in log
    assert not sock.exists()
    assert finished(client())[:2] == (99, "cold\n")


def test_only_on_linux(monkeypatch):
    monkeypatch.setattr(warm_start.sys, "platform", "darwin")
    assert not warm_start.enabled({})
    monkeypatch.setattr(warm_start.sys, "platform", "linux")
    assert warm_start.enabled({}) and not warm_start.enabled({"STUDIO_WARM_RUNS": "false"})


def test_a_module_the_warm_process_imported_runs_as_main_without_runpys_warning():
    """Every forked run's engine was imported by the warm process first; runpy's warning
    about that went to the worker's log once per run."""
    done = subprocess.run(
        [sys.executable, "-c", "import tests.polling\n"
         "from engine.flow_run_process import run_module\n"
         "print('code', run_module('tests.polling'))"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.stdout.strip() == "code 0", done.stderr
    assert "RuntimeWarning" not in done.stderr, done.stderr
