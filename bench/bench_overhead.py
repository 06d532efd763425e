"""Benchmark of what a batch costs beyond its work: `studio batch run --avatar demo --pieces N`
on the embedded defaults (no provider keys: the offline preview renderer, template hooks,
local moderation, local storage), for 5, 50 and 500 pieces, as a user runs it.

WHY: issue 11 asks that a 5-piece batch take seconds, not the 20 s of Prefect start-up
around it, and that Prefect cost a small fraction of each piece; this prints those
figures next to the issue's limits, from the command itself (never asserted: a shared
2-core machine is noisy, so it prints medians and the spread).

Printed per run and, at the end, as medians over `--runs` with the spread (min-max):
- wall: the whole command's wall time (time around the subprocess);
- batch: the `Total Duration` of its `[BATCH COMPLETE]` (or `[BATCH FAILED]`) line;
- CPU (user+sys) of the command (with the children it waited for) and of the Prefect
  server. A long-lived local server (state file `$PREFECT_HOME/studio-local-server.json`,
  {"pid", "url"}) is read from /proc/<pid>/stat before and after each command. Prefect's
  own temporary server is a child of the command: its CPU is inside the command's figure,
  and is split out by sampling the command's child processes with psutil (approximate:
  the last sample is up to 0.1 s before the server exits), or printed combined;
- marginal CPU per piece, command + server: (cpu_total(50) - cpu_total(5)) / 45 and
  (cpu_total(500) - cpu_total(50)) / 450 in ms, per round (paired runs), against the
  issue's 20 ms;
- server start: from `ensure_started()` to the local server's first healthy answer, on
  a migrated PREFECT_HOME (what a cold command waits for at most), once per round.

Runs, in one session (a temporary STUDIO_HOME and PREFECT_HOME, `studio init`, the demo
avatar): first the first-ever run (fresh PREFECT_HOME: Prefect's database migrations),
then per round a cold 5-piece run (any local server stopped first), a warm 5-piece run,
then the warm 50- and 500-piece runs. The marginal figures use the warm runs.

To reproduce one figure by hand (the detached local server's CPU is not in /usr/bin/time's):
  STUDIO_HOME=$(mktemp -d) PREFECT_HOME=$(mktemp -d) env -u PREFECT_API_URL sh -c \
    '.venv/bin/studio init && /usr/bin/time -f "%e s wall, %U+%S s CPU" \
     .venv/bin/studio batch run --avatar demo --pieces 5'

Usage: python bench/bench_overhead.py [--runs 3] [--pieces 5,50,500] [--skip-500]
       [--no-server-start]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDIO = ROOT / ".venv" / "bin" / "studio"
PYTHON = ROOT / ".venv" / "bin" / "python"
STATE_FILE = "studio-local-server.json"
BATCH_LINE = re.compile(r"\[BATCH (COMPLETE|FAILED)\].*?Total Duration: ([0-9.]+)s")
#: variables that would point the pipeline at real providers, a database or an API
NOT_EMBEDDED = ("ANTHROPIC_", "OPENAI_", "REPLICATE_", "MODAL_", "COMFYUI_", "R2_", "STUDIO_",
                "LORA_", "PROVIDER_", "DATABASE_URL", "PREFECT_API_", "PREFECT_PROFILES_PATH")
#: kept: how the command gets its Prefect server (STUDIO_LOCAL_SERVER=off: Prefect's own)
KEPT = ("STUDIO_LOCAL_SERVER",)
LIMITS = {  # issue 11's goals
    "cold_wall_5": 6.0,  # s, whole command, 5 pieces, no local server running
    "batch_50": 5.0,  # s, Total Duration of a 50-piece batch
    "marginal_ms": 20.0,  # ms CPU per piece, command + local Prefect server
}
CLK_TCK = os.sysconf("SC_CLK_TCK")
COMMAND_TIMEOUT = 1800.0


@dataclass
class Result:
    kind: str  # first, cold, warm
    pieces: int
    wall: float
    batch: float | None
    outcome: str  # COMPLETE, FAILED, or the exit code when there is no batch line
    cpu_command: float  # s, the command without the server when that could be split
    cpu_server: float | None  # s; None: inside cpu_command (could not be split)
    server_how: str  # local (/proc), sampled (psutil child), combined

    @property
    def cpu_total(self) -> float:
        return self.cpu_command + (self.cpu_server or 0.0)


def child_env(studio_home: Path, prefect_home: Path) -> dict[str, str]:
    """The user's environment on the embedded defaults: no provider keys, no API URL."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(NOT_EMBEDDED) or k.startswith(KEPT)}
    env.update({"STUDIO_HOME": str(studio_home), "PREFECT_HOME": str(prefect_home)})
    return env


def _proc_stat(pid: int) -> tuple[str, float] | None:
    """(state letter, CPU seconds incl. waited children) of a process, None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # after the ")": state is field 3; utime, stime, cutime, cstime are fields 14-17
    ticks = sum(int(x) for x in fields[11:15])
    return fields[0], ticks / CLK_TCK


def local_server(prefect_home: Path) -> tuple[int, float] | None:
    """(pid, CPU seconds so far) of the live local server in the state file, if any."""
    try:
        pid = int(json.loads((prefect_home / STATE_FILE).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):
        return None
    return pid, stat[1]


def stop_local_server(prefect_home: Path) -> None:
    """No local server at the start of a cold run: SIGTERM it, wait, drop the state file."""
    running = local_server(prefect_home)
    if running is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(running[0], signal.SIGTERM)
        deadline = time.monotonic() + 30
        while local_server(prefect_home) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
    with contextlib.suppress(FileNotFoundError):
        (prefect_home / STATE_FILE).unlink()


class ChildSampler:
    """Samples the command's Prefect-server child processes' CPU (Prefect's temporary
    server runs as the command's child), so the command's figure can be split."""

    def __init__(self, pid: int, exclude: set[int]) -> None:
        self.pid, self.exclude = pid, exclude
        self.server_cpu: dict[int, float] = {}
        self.available = True
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ChildSampler:
        self._thread.start()
        return self

    def stop(self, also_exclude: int | None = None) -> float | None:
        """The sampled servers' CPU seconds (None without psutil), leaving out the
        long-lived local server, which is the command's child until the command exits."""
        self._done.set()
        self._thread.join()
        if not self.available:
            return None
        return sum(cpu for pid, cpu in self.server_cpu.items() if pid != also_exclude)

    def _run(self) -> None:
        try:
            import psutil
        except ImportError:
            self.available = False
            return
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._done.wait(0.1):
            with contextlib.suppress(psutil.Error):
                for child in root.children(recursive=True):
                    if child.pid in self.exclude:
                        continue
                    with contextlib.suppress(psutil.Error):
                        cmdline = " ".join(child.cmdline())
                        if "prefect" in cmdline and ("server" in cmdline or "uvicorn" in cmdline):
                            times = child.cpu_times()
                            self.server_cpu[child.pid] = (
                                times.user + times.system + times.children_user
                                + times.children_system
                            )


def run_command(kind: str, pieces: int, env: dict[str, str], prefect_home: Path,
                cwd: Path) -> Result:
    if kind in ("first", "cold"):
        stop_local_server(prefect_home)
    before = local_server(prefect_home)
    command = [str(STUDIO), "batch", "run", "--avatar", "demo", "--pieces", str(pieces)]
    with tempfile.TemporaryFile() as output:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=output,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        sampler = ChildSampler(process.pid, {before[0]} if before else set()).start()
        timer = threading.Timer(COMMAND_TIMEOUT, process.kill)
        timer.start()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped: no Popen.wait
        cpu_command = usage.ru_utime + usage.ru_stime
        after = local_server(prefect_home)
        sampled = sampler.stop(after[0] if after else None)
        output.seek(0)
        text = output.read().decode(errors="replace")
    match = BATCH_LINE.search(text)
    if match is None:
        print(f"  no [BATCH ...] line (exit {process.returncode}); output tail:\n"
              + "\n".join(text.splitlines()[-15:]), file=sys.stderr)
    outcome = match.group(1) if match else f"exit {process.returncode}"
    batch = float(match.group(2)) if match else None

    if after is not None:  # a long-lived local server: its own CPU delta
        same = before is not None and before[0] == after[0]
        cpu_server: float | None = after[1] - (before[1] if same else 0.0)
        how = "local"
        if sampled:  # a temporary server beside it would be a child too
            cpu_command -= sampled
            cpu_server = (cpu_server or 0.0) + sampled
    elif sampled is not None and sampled > 0:
        cpu_command, cpu_server, how = cpu_command - sampled, sampled, "sampled"
    else:
        cpu_server, how = None, "combined"
    return Result(kind, pieces, wall, batch, outcome, cpu_command, cpu_server, how)


#: started in a process of its own, as a command starts it: seconds until healthy
SERVER_START = ("import time; from engine.local_server import ensure_started; "
                "t = time.perf_counter(); ok = ensure_started().wait_ready(); "
                "print(time.perf_counter() - t if ok else 'failed')")


def time_server_start(env: dict[str, str], prefect_home: Path, cwd: Path) -> float | None:
    """Seconds from `ensure_started()` to the local server's first healthy answer (None:
    it did not start); stopped again afterwards."""
    stop_local_server(prefect_home)
    done = subprocess.run([str(PYTHON), "-c", SERVER_START], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    stop_local_server(prefect_home)
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"  local server did not start: {done.stdout[-500:]}{done.stderr[-500:]}",
              file=sys.stderr)
        return None


def setup(session: Path) -> tuple[dict[str, str], Path]:
    studio_home, prefect_home = session / "studio", session / "prefect"
    prefect_home.mkdir(parents=True)
    env = child_env(studio_home, prefect_home)
    subprocess.run([str(STUDIO), "init"], env=env, cwd=session, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(
        [str(PYTHON), "-c", "from studio.bootstrap import ensure_demo_avatar as e; e()"],
        env=env, cwd=session, check=True,
    )
    return env, prefect_home


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_run(result: Result) -> None:
    print(f"  {result.kind:5s} {result.pieces:4d} pieces: wall {result.wall:6.2f} s, "
          f"batch {_fmt(result.batch, '6.2f')} s ({result.outcome}), CPU command "
          f"{result.cpu_command:6.2f} s + server {_fmt(result.cpu_server, '6.2f')} s "
          f"({result.server_how})", flush=True)


def spread(values: list[float | None], spec: str = ".2f") -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    med = statistics.median(known)
    if len(known) == 1:
        return format(med, spec)
    return f"{med:{spec}} ({min(known):{spec}}-{max(known):{spec}})"


def summary(results: list[Result], counts: list[int], starts: list[float | None]) -> None:
    groups: dict[tuple[str, int], list[Result]] = {}
    for r in results:
        groups.setdefault((r.kind, r.pieces), []).append(r)
    print("\nmedians (min-max); CPU in s; server CPU '-' = inside the command's figure")
    header = (f"{'run':6s}{'pieces':>6s}{'n':>3s}  {'wall s':>19s}  {'batch s':>19s}  "
              f"{'CPU command':>19s}  {'CPU server':>19s}  {'CPU total':>19s}  server")
    print(header)
    for (kind, pieces), group in groups.items():
        print(f"{kind:6s}{pieces:6d}{len(group):3d}  "
              f"{spread([r.wall for r in group]):>19s}  "
              f"{spread([r.batch for r in group]):>19s}  "
              f"{spread([r.cpu_command for r in group]):>19s}  "
              f"{spread([r.cpu_server for r in group]):>19s}  "
              f"{spread([r.cpu_total for r in group]):>19s}  "
              f"{','.join(sorted({r.server_how for r in group}))}")

    print("\nagainst issue 11's limits (ratio = figure / limit; <= 1 meets it)")
    cold = [r.wall for r in groups.get(("cold", counts[0]), [])]
    if cold:
        limit = (f"; limit {LIMITS['cold_wall_5']:g} s; ratio "
                 f"{statistics.median(cold) / LIMITS['cold_wall_5']:.2f}") if counts[0] == 5 else ""
        print(f"{counts[0]}-piece whole command, cold:  {spread(cold)} s{limit}")
    warm = [r.wall for r in groups.get(("warm", counts[0]), [])]
    if warm:
        print(f"{counts[0]}-piece whole command, warm:  {spread(warm)} s")
    first = [r.wall for r in groups.get(("first", counts[0]), [])]
    if first:
        print(f"first-ever run (migrations):  {spread(first)} s")
    if starts:
        print(f"local server start (to healthy):  {spread(starts)} s")
    batch50 = [r.batch for r in groups.get(("warm", 50), []) if r.batch is not None]
    if batch50:
        med = statistics.median(batch50)
        print(f"50-piece batch (Total Duration): {spread(batch50)} s; limit "
              f"{LIMITS['batch_50']:g} s; ratio {med / LIMITS['batch_50']:.2f}")

    marginals: dict[tuple[int, int], float] = {}
    for low, high in itertools.pairwise(counts):
        lows, highs = groups.get(("warm", low), []), groups.get(("warm", high), [])
        paired = [(h.cpu_total - lo.cpu_total) / (high - low) * 1000
                  for lo, h in zip(lows, highs, strict=False)]
        if not paired:
            continue
        med = statistics.median(paired)
        marginals[(low, high)] = med
        note = "" if all(r.cpu_server is not None for r in lows + highs) else " (server combined)"
        print(f"marginal CPU/piece ({high}-{low})/{high - low}: {spread(paired, '.1f')} ms; "
              f"limit {LIMITS['marginal_ms']:g} ms; ratio {med / LIMITS['marginal_ms']:.2f}"
              f"{note}")
    if len(marginals) >= 2:
        (_, first), (_, second) = list(marginals.items())[:2]
        print(f"marginal CPU/piece growth (later / earlier pair): {second / first:.2f} "
              "(1.0: the same per-piece cost at the larger batch)")
    per_piece = {}
    for n in counts[1:]:
        batches = [r.batch / n for r in groups.get(("warm", n), []) if r.batch]
        if batches:
            per_piece[n] = statistics.median(batches) * 1000
            print(f"batch time per piece at {n}: "
                  f"{spread([b * 1000 for b in batches], '.1f')} ms")
    if 50 in per_piece and 500 in per_piece:
        print(f"batch time per piece, 500 / 50: {per_piece[500] / per_piece[50]:.2f} "
              "(the issue: the same per-piece figures at 500 as at 50)")


def main(args: argparse.Namespace) -> None:
    counts = sorted({int(n) for n in args.pieces.split(",")})
    if args.skip_500:
        counts = [n for n in counts if n != 500]
    print(f"bench_overhead: studio batch run --avatar demo --pieces {counts}, "
          f"{args.runs} runs each, embedded defaults")
    results: list[Result] = []
    starts: list[float | None] = []
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        session = Path(tmp)
        env, prefect_home = setup(session)
        try:
            first = run_command("first", counts[0], env, prefect_home, session)
            print("first-ever run (fresh PREFECT_HOME, Prefect's migrations):")
            print_run(first)
            results.append(first)
            for round_number in range(args.runs):
                print(f"round {round_number + 1}/{args.runs}:")
                if args.server_start:
                    starts.append(time_server_start(env, prefect_home, session))
                    print(f"  local server start: {_fmt(starts[-1], '.2f')} s", flush=True)
                plan = [("cold", counts[0])] + [("warm", n) for n in counts]
                for kind, pieces in plan:
                    result = run_command(kind, pieces, env, prefect_home, session)
                    print_run(result)
                    results.append(result)
        finally:
            stop_local_server(prefect_home)
    summary(results, counts, starts)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds (medians over them)")
    parser.add_argument("--pieces", default="5,50,500", help="comma-separated piece counts")
    parser.add_argument("--skip-500", action="store_true", help="leave out 500 (a quick run)")
    parser.add_argument("--no-server-start", dest="server_start", action="store_false",
                        help="do not time the local server's start on its own")
    main(parser.parse_args())
