"""The fleet against the providers' pace (issue 20): deployment-run batches on one worker
against the provider-bound limit.

A real cluster as the README sets it up (tests/faults/studio_server.py, as
bench/bench_workers.py uses it): `studio server` on PostgreSQL, SeaweedFS, the ComfyUI
emulator at 1.5-2.5 s with 10 slots, one process worker (`prefect worker start
--limit 3`, polling twice a second as the README sets it) that has run two batches
before (so its runs fork from a warm process, engine/warm_start.py, as on any worker
after its first runs). Per scenario and round, `B`
batches of `P` pieces are submitted at once; it prints per round and, at the end, the
medians with the spread (min-max) over `--rounds`:

- wall: submission to the last batch's `finished_at` (the batch rows);
- bound: the provider-bound limit, pieces x mean latency / slots + one image (the mean
  of the latencies the ComfyUI emulator drew in that round), and wall / bound;
- busy: ComfyUI slots busy, the time integral of prompts executing (sampled every
  50 ms) over slots x wall;
- finish: each batch's submission to `finished_at`, and the spread of the batches that
  ran together (a wave: batches that started before the first of them finished; with
  `--limit 3`, 6 batches run as two waves), last / first - 1 measured from the wave's
  first start; the table gives the first wave's (the issue's goal: at most 15 %), and
  the same for their runs ([BATCH START] to finish: the slots' sharing without the
  skew of the runs' starts);
- start: per batch, submission to its `[BATCH START]` line (the flow run's log record
  on the Prefect API);
- CPU: per batch, user+system CPU of the processes of its flow run (the worker's
  children whose environment names the run, sampled every second with psutil, plus
  what each run a warm process forked used, from the warm process's log line at its
  end; engine/warm_server.py). Sampling the forks every 0.2 s, as before, cost the bench
  ~1.6 s of CPU per round, taken from the batches it measures on a 2-core host;
- CPU by role (`--census`): user+system CPU over the round of the Prefect server,
  PostgreSQL, SeaweedFS, the worker, the flow runs (the worker's children and the warm
  processes with their forks) and this process (the provider emulators run in it), and
  their sum over the machine's cores x wall: whether the fleet waits for providers or for
  CPU.

    .venv/bin/python bench/bench_fleet.py [--rounds 3] [--scenarios 1x10,6x10,3x50]
        [--limit 3] [--query-seconds 0.5] [--timeline] [--census] [--claim-seconds S]
        [--asks-in-flight N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.warm_start import warm_dir  # noqa: E402
from studio.batch_status import MARK  # noqa: E402
from tests.faults.studio_server import StudioServerCluster, studio_cluster  # noqa: E402
from tests.faults.worker_cluster import studio_session  # noqa: E402
from tests.infra.warm import warm_processes  # noqa: E402

STRIP_SECONDS = 0.5  # `--timeline`'s ComfyUI busy strip
SLOTS = 10  # the ComfyUI cap (`provider:comfyui`) and the emulator's GPU count
WORKER = "fleet"


@dataclass
class Round:
    batches: int
    pieces: int
    wall: float
    bound: float
    busy: float
    finishes: list[float]  # per batch, in submission order
    starts: list[float]  # per batch (NaN: no [BATCH START] record found)
    cpu: list[float]
    completed: int
    replicate_jobs: int
    #: per batch: seconds from submission to each state of its flow run (`--timeline`)
    states: list[dict[str, float]] = field(default_factory=list)
    #: the first batch's task and subflow runs: name, start, end (`--timeline`)
    parts: list[tuple[str, float, float]] = field(default_factory=list)
    #: per batch: seconds from submission to its batch and step log lines (`--timeline`)
    marks: list[dict[str, float]] = field(default_factory=list)
    #: CPU seconds per role over the round (`--census`)
    census: dict[str, float] = field(default_factory=dict)
    #: ComfyUI prompts executing, mean per STRIP_SECONDS from submission (`--timeline`)
    strip: list[float] = field(default_factory=list)
    #: per prompt after the first SLOTS: seconds a GPU stood free before it (`handovers`)
    handovers: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.wall / self.bound

    def waves(self) -> list[list[int]]:
        """Batches that ran together: a batch joins the wave of the batches before it if
        it started before the first of them finished (`--limit` holds the rest back)."""
        order = sorted(range(len(self.starts)), key=lambda i: self.starts[i])
        waves: list[list[int]] = []
        for i in order:
            if waves and self.starts[i] < min(self.finishes[j] for j in waves[-1]):
                waves[-1].append(i)
            else:
                waves.append([i])
        return waves

    @property
    def spreads(self) -> list[float]:
        """Per wave of concurrent batches: last finish / first finish - 1, measured from
        the wave's first start."""
        out = []
        for wave in self.waves():
            if len(wave) < 2:
                continue
            zero = min(self.starts[i] for i in wave)
            ends = [self.finishes[i] - zero for i in wave]
            out.append(max(ends) / min(ends) - 1)
        return out

    @property
    def spread(self) -> float:
        return self.spreads[0] if self.spreads else 0.0

    @property
    def run_spreads(self) -> list[float]:
        """Per wave: the longest / shortest run ([BATCH START] to finish) - 1: the share
        of the slots each got, without the skew of their starts."""
        out = []
        for wave in self.waves():
            runs = [self.finishes[i] - self.starts[i] for i in wave]
            if len(runs) > 1:
                out.append(max(runs) / min(runs) - 1)
        return out


@dataclass
class Sampler:
    """A thread sampling the ComfyUI emulator's executing prompts and the flow runs' CPU."""

    cluster: StudioServerCluster
    busy: list[tuple[float, int]] = field(default_factory=list)
    cpu: dict[int, tuple[str, float]] = field(default_factory=dict)  # pid: (run, cpu s)
    _stop: threading.Event = field(default_factory=threading.Event)
    _runs: dict[int, str | None] = field(default_factory=dict)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        tick = 0
        while not self._stop.wait(0.05):
            self.busy.append((time.time(), self.cluster.comfyui.executing))
            tick += 1
            if tick % 20 == 0:
                self._sample_cpu()

    def _sample_cpu(self) -> None:
        """The worker's children (each run's `engine.flow_run_process`, or its engine when
        it ran cold): they live as long as their run, so a sample a second is enough."""
        worker = self.cluster.workers.get(WORKER)
        if worker is None:
            return
        children: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(worker.pid).children(recursive=True)
        for child in children:
            with contextlib.suppress(psutil.Error):
                if not self._runs.get(child.pid):  # read again: a child before its exec
                    self._runs[child.pid] = child.environ().get("PREFECT__FLOW_RUN_ID")
                run = self._runs[child.pid]
                if run:
                    times = child.cpu_times()
                    self.cpu[child.pid] = (run, times.user + times.system)

    def _forks_cpu(self) -> None:
        """The runs warm processes forked, from their logs' `ended` lines (the rusage the
        warm process reaped: exact, and nothing to sample)."""
        for log in warm_dir().glob("*.log"):
            for line in log.read_text(errors="replace").splitlines():
                if "flow run " in line and ": pid " in line and ", cpu " in line:
                    run, rest = line.split("flow run ", 1)[1].split(": pid ", 1)
                    pid = int(rest.split()[0])
                    cpu = float(rest.split(", cpu ", 1)[1].split()[0])
                    self.cpu[-pid] = (run, cpu)  # negative: never a worker child's pid

    def strip(self, start: float, end: float) -> list[float]:
        """Mean prompts executing per STRIP_SECONDS from `start` to `end`."""
        buckets: dict[int, list[int]] = {}
        for t, n in self.busy:
            if start <= t <= end:
                buckets.setdefault(int((t - start) / STRIP_SECONDS), []).append(n)
        return [statistics.fmean(buckets.get(i, [0])) for i in range(max(buckets, default=-1) + 1)]

    def busy_fraction(self, start: float, end: float) -> float:
        samples = [n for t, n in self.busy if start <= t <= end]
        return statistics.fmean(samples) / SLOTS if samples else 0.0

    def cpu_of(self, runs: list[str]) -> list[float]:
        """Each run's CPU: the worker's children sampled once more, the warm logs read once."""
        self._sample_cpu()
        self._forks_cpu()
        return [sum(cpu for r, cpu in self.cpu.values() if r == run) for run in runs]


def _tree_cpu(roots: list[psutil.Process], *, own: bool = True) -> float:
    """CPU of processes and their descendants: the live ones' own, plus what the reaped
    ones left in their parents (children_user/system)."""
    total = 0.0
    seen: set[int] = set()
    for root in roots:
        with contextlib.suppress(psutil.Error):
            for process in [root, *root.children(recursive=True)]:
                if process.pid in seen:
                    continue
                seen.add(process.pid)
                with contextlib.suppress(psutil.Error):
                    t = process.cpu_times()
                    total += t.children_user + t.children_system
                    if own or process.pid != root.pid:
                        total += t.user + t.system
    return total


def _by_cmdline(needle: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if needle in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def cpu_census(cluster: StudioServerCluster, base: Path) -> dict[str, float]:
    """CPU seconds used so far per role (a round's is the difference of two)."""
    worker = cluster.workers.get(WORKER)
    server = [psutil.Process(cluster.server.pid)] if cluster.server else []
    workers = [psutil.Process(worker.pid)] if worker else []
    return {
        "server": _tree_cpu(server),
        "postgres": _tree_cpu(_by_cmdline(str(base / "pgdata"))),
        "s3": _tree_cpu(_by_cmdline(str(base / "s3"))),
        "worker": sum(sum(p.cpu_times()[:2]) for p in workers),
        "runs": _tree_cpu(workers, own=False) + _tree_cpu(warm_processes(warm_dir())),
        "bench": sum(psutil.Process().cpu_times()[:2]),
    }


def batch_rows(
    cluster: StudioServerCluster, ids: list[str]
) -> dict[str, tuple[str, datetime | None]]:
    from sqlalchemy import select

    from studio.db.models import Batch

    with studio_session(cluster) as session:
        rows = session.scalars(select(Batch).where(Batch.id.in_(ids))).all()
        return {row.id: (row.status, row.finished_at) for row in rows}


async def batch_marks(client, ids: list[str]) -> dict[str, dict[str, float]]:  # type: ignore[no-untyped-def]
    """Each run's `[BATCH START]`, `[STEP n/7]` and `[BATCH COMPLETE]` log record times
    (epoch s), from the Prefect API."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    marks: dict[str, dict[str, float]] = {}
    offset = 0
    while True:
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)),
            limit=200, offset=offset,
        )
        for record in logs:
            mark = MARK.match(record.message)
            if mark and record.flow_run_id:
                marks.setdefault(str(record.flow_run_id), {}).setdefault(
                    mark.group(0), record.timestamp.timestamp()
                )
        if len(logs) < 200:
            return marks
        offset += 200


async def state_times(client, ids: list[str], submitted: float) -> list[dict[str, float]]:  # type: ignore[no-untyped-def]
    """Per run: seconds from submission to the first time it entered each state (the
    server's state history), where the time between two batches of a wave goes."""
    from uuid import UUID

    out = []
    for run_id in ids:
        seen: dict[str, float] = {}
        for state in await client.read_flow_run_states(UUID(run_id)):
            seen.setdefault(state.name, state.timestamp.timestamp() - submitted)
        out.append(seen)
    return out


async def run_parts(client, run_id: str, submitted: float) -> list[tuple[str, float, float]]:  # type: ignore[no-untyped-def]
    """A run's task runs and subflow runs (and their task runs): name, start and end in
    seconds from submission, by start: what the run did before its first provider call."""
    from uuid import UUID

    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    subflows = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[UUID(run_id)])
    ))
    ids = [UUID(run_id), *(run.id for run in subflows)]
    tasks = await client.read_task_runs(
        task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=ids)), limit=200
    )
    parts = []
    for run in [*subflows, *tasks]:
        if run.start_time is None:
            continue
        end = run.end_time or run.start_time
        parts.append((run.name, _epoch(run.start_time) - submitted, _epoch(end) - submitted))
    return sorted(parts, key=lambda part: part[1])


def _epoch(moment: datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


async def one_round(
    cluster: StudioServerCluster, sampler: Sampler, batches: int, pieces: int,
    base: Path | None = None,
) -> Round:
    census = cpu_census(cluster, base) if base else {}
    records = len(cluster.comfyui.records)
    spans = len(cluster.comfyui.spans)
    replicate_before = int(cluster.replicate.billed_jobs)
    async with cluster.client() as client:
        # the client's CSRF token first: concurrent first writes would each fetch one,
        # and each fetch voids the token the others sent (403)
        await client.read_flow_runs(limit=1)
        submitted = time.time()
        ids = list(await asyncio.gather(*(cluster.submit(client, pieces) for _ in range(batches))))
        while True:
            rows = batch_rows(cluster, ids)
            if len(rows) == batches and all(
                status in ("completed", "failed") for status, _ in rows.values()
            ):
                break
            if time.time() - submitted > 1800:
                raise SystemExit("batches did not finish in 30 minutes")
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # the last logs reach the API
        marks = await batch_marks(client, ids)
        states = await state_times(client, ids, submitted)
        first = min(ids, key=lambda i: marks.get(i, {}).get("[BATCH START]", float("inf")))
        parts = await run_parts(client, first, submitted)
    finishes = [_epoch(rows[i][1]) - submitted if rows[i][1] else float("nan") for i in ids]
    wall = max(f for f in finishes if f == f)
    drawn = [latency for _, latency, _ in cluster.comfyui.records[records:] if latency > 0]
    mean = statistics.fmean(drawn) if drawn else 2.0
    await asyncio.sleep(0.5)  # the flow-run processes exit; their CPU is logged or sampled
    if base:
        after = cpu_census(cluster, base)
        census = {role: after[role] - census[role] for role in after}
    return Round(
        batches=batches, pieces=pieces, wall=wall,
        bound=batches * pieces * mean / SLOTS + mean,
        busy=sampler.busy_fraction(submitted, submitted + wall),
        finishes=finishes,
        starts=[
            marks.get(i, {}).get("[BATCH START]", float("nan")) - submitted
            for i in ids
        ],
        parts=parts,
        marks=[{name: t - submitted for name, t in marks.get(i, {}).items()} for i in ids],
        cpu=sampler.cpu_of(ids),
        completed=sum(1 for status, _ in rows.values() if status == "completed"),
        replicate_jobs=int(cluster.replicate.billed_jobs) - replicate_before,
        states=states,
        census=census,
        strip=sampler.strip(submitted, submitted + wall),
        handovers=handovers(cluster.comfyui.spans[spans:]),
    )


def handovers(spans: list[tuple[float, float]], slots: int = SLOTS) -> list[float]:
    """Per prompt after the first `slots`: how long the GPU it took had stood free.

    The k-th prompt to start (in start order) can only have found a GPU once k + 1 -
    slots prompts had ended, so the (k - slots)-th end is when its GPU came free: the gap
    is the slots' hand-over from one image to the next (the client reading the result,
    its lease passing on, the next prompt's post), plus any time no image was waiting
    (between waves; none while a 3 x 50 round runs)."""
    starts = sorted(start for start, _ in spans)
    ends = sorted(end for _, end in spans)
    return [max(0.0, starts[k] - ends[k - slots]) for k in range(slots, len(starts))]


def print_timeline(r: Round) -> None:
    """Per batch, in start order: its run's states, `[BATCH START]` and its row's
    finish, in seconds from submission."""
    for i in sorted(range(r.batches), key=lambda i: r.starts[i]):
        marks = dict(r.states[i]) | r.marks[i] | {"finished_at": r.finishes[i]}
        print("   batch", i, " ".join(f"{name} {t:.1f}" for name, t in
                                    sorted(marks.items(), key=lambda kv: kv[1])))
    print("   the first batch's task and subflow runs (start-end): " + ", ".join(
        f"{name} {start:.2f}-{end:.2f}" for name, start, end in r.parts
    ))
    print(f"   ComfyUI prompts executing per {STRIP_SECONDS} s: "
          + " ".join(f"{n:.0f}" for n in r.strip))
    if r.handovers:
        gaps = sorted(r.handovers)
        print(f"   a GPU free before its next prompt: median {1000 * statistics.median(gaps):.0f}"
              f" ms, 90th percentile {1000 * gaps[int(0.9 * (len(gaps) - 1))]:.0f} ms, "
              f"{sum(gaps) / SLOTS:.2f} s of wall over {len(gaps)} prompts")


def _fmt(values: list[float], unit: str = "s", digits: int = 1) -> str:
    return " ".join(f"{v:.{digits}f}" for v in values) + f" {unit}" if values else "-"


def _median(values: list[float], digits: int = 1, unit: str = "") -> str:
    if not values:
        return "-"
    return (f"{statistics.median(values):.{digits}f}{unit} "
            f"[{min(values):.{digits}f}-{max(values):.{digits}f}]")


async def warm_up(cluster: StudioServerCluster, sampler: Sampler) -> None:
    """A standing worker has run batches before: its first run of an environment only
    notes it, the second starts the warm process its later runs fork from
    (engine/warm_start.py), and after the first fork ends the warm process imports what
    that run had to (engine/warm_server.py `learn`, about 1.2 s of CPU, once per code
    version): so three 1-piece batches, else the first measured wave pays those imports
    in each of its forks and the learning blocks the next fork."""
    for _ in range(3):
        await one_round(cluster, sampler, 1, 1)
    await asyncio.sleep(5)


def print_census(r: Round) -> None:
    total = sum(r.census.values())
    cores = psutil.cpu_count() or 1
    print("   CPU by role " + ", ".join(f"{k} {v:.1f}" for k, v in r.census.items())
          + f" s; total {total:.1f} s = {total / (cores * r.wall):.0%} of {cores} cores"
          " x wall")


async def bench(cluster: StudioServerCluster, args: argparse.Namespace, base: Path) -> None:
    scenarios = [tuple(int(n) for n in s.split("x")) for s in args.scenarios.split(",")]
    results: dict[tuple[int, int], list[Round]] = {s: [] for s in scenarios}
    # the README's worker settings: a poll every 0.5 s (the harness's default is 2 s),
    # unless --query-seconds says otherwise
    extra = {} if args.claim_seconds is None else {
        "PROVIDER_SLOT_CLAIM_SECONDS": str(args.claim_seconds)}
    if args.asks_in_flight is not None:
        extra["PROVIDER_SLOT_ASKS_IN_FLIGHT"] = str(args.asks_in_flight)
    cluster.start_worker(WORKER, limit=args.limit,
                         PREFECT_WORKER_QUERY_SECONDS=str(args.query_seconds), **extra)
    await asyncio.sleep(5)  # a standing worker: it has polled before the first batch
    with Sampler(cluster) as sampler:
        await warm_up(cluster, sampler)
        for n in range(args.rounds):
            for batches, pieces in scenarios:
                r = await one_round(cluster, sampler, batches, pieces,
                                    base if args.census else None)
                results[(batches, pieces)].append(r)
                print(f"round {n + 1} {batches} x {pieces}: wall {r.wall:.1f} s, bound "
                      f"{r.bound:.1f} s, wall/bound {r.ratio:.2f}, busy {r.busy:.0%}, "
                      f"{r.completed}/{batches} completed, replicate jobs {r.replicate_jobs}"
                      f" | finish {_fmt(r.finishes)} (spread per wave "
                      f"{' '.join(f'{x:.0%}' for x in r.spreads) or '-'}; of their runs "
                      f"{' '.join(f'{x:.0%}' for x in r.run_spreads) or '-'}) | start "
                      f"{_fmt(r.starts)} | CPU {_fmt(r.cpu)}", flush=True)
                if args.timeline:
                    print_timeline(r)
                if args.census:
                    print_census(r)
                await asyncio.sleep(3)  # leases lingering, processes exiting
    print(f"\nworker --limit {args.limit}, {args.rounds} round(s); medians [min-max]")
    print("| scenario | wall | bound | wall / bound | ComfyUI slots busy | finish spread "
          "| run spread | submission -> [BATCH START] | flow-run CPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (batches, pieces), rounds in results.items():
        print(
            f"| {batches} x {pieces} | {_median([r.wall for r in rounds], unit=' s')} "
            f"| {_median([r.bound for r in rounds], unit=' s')} "
            f"| {_median([r.ratio for r in rounds], 2)} "
            f"| {_median([100 * r.busy for r in rounds], 0, ' %')} "
            f"| {_median([100 * r.spread for r in rounds], 0, ' %')} "
            f"| {_median([100 * r.run_spreads[0] for r in rounds if r.run_spreads], 0, ' %')} "
            f"| {_median([s for r in rounds for s in r.starts if s == s], 1, ' s')} "
            f"| {_median([c for r in rounds for c in r.cpu if c > 0], 2, ' s')} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenarios", default="1x10,6x10,3x50",
                        help="BATCHESxPIECES, comma-separated")
    parser.add_argument("--limit", type=int, default=3, help="prefect worker start --limit")
    parser.add_argument("--query-seconds", type=float, default=0.5,
                        help="the worker's PREFECT_WORKER_QUERY_SECONDS (the README's 0.5)")
    parser.add_argument("--timeline", action="store_true",
                        help="print each batch's run states, start and finish, and ComfyUI's "
                        "busy strip, per round")
    parser.add_argument("--claim-seconds", type=float, default=None,
                        help="PROVIDER_SLOT_CLAIM_SECONDS for the worker's runs (0: no claims; "
                        "default: the project's)")
    parser.add_argument("--asks-in-flight", type=int, default=None,
                        help="PROVIDER_SLOT_ASKS_IN_FLIGHT for the worker's runs (increments "
                        "of a limit a process sends at once; default: the project's)")
    parser.add_argument("--census", action="store_true",
                        help="print each round's CPU by role (server, database, runs, ...)")
    args = parser.parse_args()
    # as bench/bench_run_start.py: no installed worker compiles its modules on every run
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

    from tests.infra.postgres import start_embedded_postgres
    from tests.infra.seaweedfs import S3Server

    base = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    server_url, stop_pg = start_embedded_postgres(base / "pgdata")
    s3 = S3Server(base_dir=base / "s3")
    s3.start()
    try:
        with studio_cluster(base / "cluster", server_url, s3) as cluster:
            print(f"cluster: {base / 'cluster'}", flush=True)
            asyncio.run(bench(cluster, args, base))
    finally:
        s3.shutdown()
        stop_pg()


if __name__ == "__main__":
    main()
