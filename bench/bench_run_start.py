"""What a deployment run costs before its work: submission -> `[BATCH START]` and the CPU
of the flow-run process, on the cluster harness (tests/faults/studio_server.py).

WHY: issue 20 asks for submission to `[BATCH START]` within 1.5 s with the README's
worker settings and at most 1.5 s of fixed CPU per deployment-run batch (measured before
at 3.4 s and 3.2 s). This prints both per run and as medians with the spread, plus where
the start-up time goes (created -> Pending: the worker's poll; Pending -> Running: the
process start and the engine; Running -> `[BATCH START]`: the flow's own set-up), and
the CPU of one run of each maintenance deployment (`health`, `crash-recovery`).

The CPU of a run is the increase of the worker's reaped-children CPU (user + system,
`psutil.Process(worker).cpu_times().children_*`) over the run: every process the worker
started for it and waited for (supervisor, engine, hooks), teardown included, plus the
same of the warm processes (engine/warm_server.py: a run forked there is their child);
runs go one at a time so nothing else is counted (the deployments' schedules are
paused). Measuring starts once a warm process serves the worker's environment (the
second run on a worker starts one); its own start-up (~2.5 s, once) is not counted.

    .venv/bin/python bench/bench_run_start.py [--runs 5] [--pieces 1,10]
        [--query-seconds 0.5] [--prefetch-seconds 10] [--maintenance] [--profile FILE]
        [--before-tree DIR]

`--before-tree DIR` (e.g. `git worktree add --detach /tmp/before <commit>`) deploys that
checkout's flow as `content-batch/on-demand-before` (Prefect's default start, run with
PYTHONPATH=DIR) and alternates its runs with this checkout's, so both see the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.warm_start import warm_dir  # noqa: E402
from tests.faults.studio_server import StudioServerCluster, studio_cluster  # noqa: E402
from tests.infra.warm import warm_processes  # noqa: E402

WORKER = "bench-worker"


def reaped_cpu(worker: psutil.Process) -> float:
    """The worker's reaped children's CPU, plus the warm processes' (a run forked there
    is their child; one warm process's own start-up is not counted: it is paid once)."""
    total = 0.0
    for process in [worker, *warm_processes(warm_dir())]:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.children_user + times.children_system
    return total


async def wait_reaped(worker: psutil.Process, timeout: float = 60) -> None:
    """Until the worker has no child process left (the run's process was reaped)."""
    deadline = time.monotonic() + timeout
    while worker.children() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


async def pause_schedules(client: Any) -> None:
    for deployment in await client.read_deployments():
        await client.pause_deployment(deployment.id)


def kind(cmdline: list[str]) -> str:
    line = " ".join(cmdline)
    if "_workspace_supervisor" in line:
        return "supervisor"
    if "prefect.engine" in line or "engine.flow_run_process" in line:
        return "engine"
    return "other"


async def sample_children(worker: psutil.Process, seen: dict[int, tuple[str, float]]) -> None:
    """Until cancelled: the last CPU figure of every process under the worker (the last
    ~0.1 s of each, its exit included, is only in the reaped total)."""
    while True:
        for child in worker.children(recursive=True):
            try:
                times = child.cpu_times()
                seen[child.pid] = (kind(child.cmdline()), times.user + times.system)
            except psutil.Error:
                continue
        await asyncio.sleep(0.1)


async def one_run(
    cluster: StudioServerCluster, client: Any, deployment: str, parameters: dict[str, Any],
    job_variables: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    worker = psutil.Process(cluster.workers[WORKER].pid)
    await wait_reaped(worker)
    before = reaped_cpu(worker)
    load = os.getloadavg()[0]
    found = await client.read_deployment_by_name(deployment)
    seen: dict[int, tuple[str, float]] = {}
    sampler = asyncio.create_task(sample_children(worker, seen))
    run = await client.create_flow_run_from_deployment(
        found.id, parameters=parameters, job_variables=job_variables
    )
    while True:
        current = await client.read_flow_run(run.id)
        if current.state is not None and current.state.is_final():
            break
        await asyncio.sleep(0.2)
    await wait_reaped(worker)
    sampler.cancel()
    await asyncio.sleep(0.3)
    figures: dict[str, Any] = {
        "cpu": reaped_cpu(worker) - before, "state": current.state.name,  # type: ignore[union-attr]
        "load": load,
    }
    for name in ("supervisor", "engine"):
        figures[f"cpu_{name}"] = sum(cpu for k, cpu in seen.values() if k == name)
    states = {s.type.value: s.timestamp for s in await client.read_flow_run_states(run.id)}
    created = current.created
    assert created is not None
    if "PENDING" in states:
        figures["to_pending"] = (states["PENDING"] - created).total_seconds()
    if "RUNNING" in states:
        figures["to_running"] = (states["RUNNING"] - created).total_seconds()
    logs = await client.read_logs(
        log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), limit=200
    )
    starts = [log.timestamp for log in logs if "[BATCH START]" in log.message]
    if starts:
        figures["to_start"] = (min(starts) - created).total_seconds()
    return figures


async def profile_run(cluster: StudioServerCluster, client: Any, out: Path) -> None:
    """py-spy (installed in the venv for measuring only) on the worker and every process
    under it, and on each warm process and its forks, for one 1-piece run: collapsed
    stacks in `out` (the worker's) and `out`.warmN, for flame graphs."""
    import subprocess

    out.parent.mkdir(parents=True, exist_ok=True)
    # the worker, and each warm process (a run forked there is its child, not the worker's)
    pids = [cluster.workers[WORKER].pid, *(p.pid for p in warm_processes(warm_dir()))]
    spies = [
        subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
             "--subprocesses", "--format", "raw", "--rate", "200", "--nonblocking",
             "-o", str(out if n == 0 else out.with_name(f"{out.name}.warm{n}"))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for n, pid in enumerate(pids)
    ]
    await asyncio.sleep(1)
    figures = await one_run(cluster, client, "content-batch/on-demand",
                            {"avatar_id": "demo", "num_pieces": 1})
    for spy in spies:
        spy.send_signal(2)
        spy.wait(timeout=60)
    print(f"== profiled run: {figures}; stacks in {out}", flush=True)
    print(summary("profiled run", [figures]), flush=True)


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def deploy_before(cluster: StudioServerCluster, tree: Path) -> None:
    """`content-batch/on-demand-before`: the flow of another checkout (`--before-tree`,
    e.g. a `git worktree` of the commit before a change), deployed from there with
    Prefect's defaults (no `command`), for runs interleaved with this checkout's."""
    from tests.faults.worker_cluster import BIN, POOL

    env = cluster.host_env("admin")
    env["PYTHONPATH"] = str(tree)
    import subprocess

    for entrypoint, name in (("flows/content_batch.py:content_batch", "on-demand-before"),
                             ("flows/health_check.py:health_check", "health-before"),
                             ("flows/crash_recovery.py:crash_recovery", "crash-recovery-before")):
        done = subprocess.run(
            [str(BIN / "prefect"), "--no-prompt", "deploy", entrypoint, "--name", name,
             "--pool", POOL],
            cwd=tree, env=env, capture_output=True, text=True, timeout=300,
        )
        if done.returncode != 0:
            raise SystemExit(f"deploy from {tree} failed:\n{done.stdout[-2000:]}"
                             f"{done.stderr[-2000:]}")


def summary(label: str, rows: list[dict[str, Any]]) -> str:
    def col(key: str) -> str:
        return spread([r[key] for r in rows if key in r])

    return (f"== {label}, {len(rows)} runs: CPU {col('cpu')} s (supervisor "
            f"{col('cpu_supervisor')}, engine {col('cpu_engine')}) | created->Pending "
            f"{col('to_pending')} | ->Running {col('to_running')} | ->[BATCH START] "
            f"{col('to_start')} s | load {col('load')} (median, min-max)")


async def warm_up(client: Any, cluster: StudioServerCluster) -> None:
    """Runs until a warm process serves this environment (the second run starts one;
    engine/warm_start.py) and has forked once (after its first fork ends it imports what
    that run had to, once per code version: engine/warm_server.py `learn`), as on any
    worker after its first runs; disk caches too."""
    for _ in range(3):
        await one_run(cluster, client, "content-batch/on-demand",
                      {"avatar_id": "demo", "num_pieces": 1})
        if warm_processes(warm_dir()):
            await asyncio.sleep(5)  # its imports
            await one_run(cluster, client, "content-batch/on-demand",
                          {"avatar_id": "demo", "num_pieces": 1})  # its first fork
            await asyncio.sleep(3)  # what that fork taught it
            return


async def compare(cluster: StudioServerCluster, client: Any, args: argparse.Namespace) -> None:
    """Interleaved runs: before (the other checkout, Prefect's default start) and after."""
    await warm_up(client, cluster)
    modes = {
        "before": ("content-batch/on-demand-before",
                   {"env": {"PYTHONPATH": str(Path(args.before_tree).resolve())}}),
        "after": ("content-batch/on-demand", None),
    }
    for pieces in args.pieces:
        rows: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for n in range(args.runs):
            for mode, (deployment, job_variables) in modes.items():
                figures = await one_run(cluster, client, deployment,
                                        {"avatar_id": "demo", "num_pieces": pieces},
                                        job_variables)
                rows[mode].append(figures)
                print(f"{mode:6s} {pieces:3d} piece(s) run {n + 1}: " + ", ".join(
                    f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in figures.items()), flush=True)
        for mode in modes:
            print(summary(f"{mode}, {pieces} piece(s), query {args.query_seconds} s",
                          rows[mode]), flush=True)
    if not args.maintenance:
        return
    env = {"env": {"PYTHONPATH": str(Path(args.before_tree).resolve())}}
    for flow, name in (("health-check", "health"), ("crash-recovery", "crash-recovery")):
        cpus: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.runs):
            for mode, deployment, job_variables in (
                ("before", f"{flow}/{name}-before", env), ("after", f"{flow}/{name}", None)
            ):
                figures = await one_run(cluster, client, deployment, {}, job_variables)
                cpus[mode].append(figures["cpu"])
        for mode, values in cpus.items():
            print(f"== {mode}, {flow}/{name}: CPU {spread(values)} s per run", flush=True)


async def bench(cluster: StudioServerCluster, args: argparse.Namespace) -> None:
    overrides = {"PREFECT_WORKER_QUERY_SECONDS": str(args.query_seconds),
                 "PREFECT_WORKER_PREFETCH_SECONDS": str(args.prefetch_seconds)}
    if args.before_tree:
        deploy_before(cluster, Path(args.before_tree).resolve())
    cluster.start_worker(WORKER, limit=3, **overrides)
    async with cluster.client() as client:
        await pause_schedules(client)
        if args.before_tree:
            await asyncio.sleep(5)
            await compare(cluster, client, args)
            return
        await asyncio.sleep(5)  # the worker's first polls
        await warm_up(client, cluster)
        for pieces in args.pieces:
            rows = []
            for n in range(args.runs):
                figures = await one_run(cluster, client, "content-batch/on-demand",
                                        {"avatar_id": "demo", "num_pieces": pieces})
                rows.append(figures)
                print(f"{pieces:3d} piece(s) run {n + 1}: " + ", ".join(
                    f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in figures.items()), flush=True)
            print(summary(f"{pieces} piece(s), query {args.query_seconds} s", rows),
                  flush=True)
        if args.profile:
            await profile_run(cluster, client, Path(args.profile))
        if args.maintenance:
            for deployment in ("health-check/health", "crash-recovery/crash-recovery"):
                cpus = []
                for _ in range(args.runs):
                    figures = await one_run(cluster, client, deployment, {})
                    cpus.append(figures["cpu"])
                print(f"== {deployment}: CPU {spread(cpus)} s, last ended {figures['state']}",
                      flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pieces", default="1,10")
    parser.add_argument("--query-seconds", type=float, default=0.5)
    parser.add_argument("--prefetch-seconds", type=float, default=10.0)
    parser.add_argument("--maintenance", action="store_true")
    parser.add_argument("--profile", help="py-spy collapsed stacks of one 1-piece run here")
    parser.add_argument("--before-tree", help="another checkout to compare with, interleaved")
    args = parser.parse_args()
    args.pieces = [int(p) for p in args.pieces.split(",")]
    # the cluster's processes inherit this environment: a shell (or CI) that sets
    # PYTHONDONTWRITEBYTECODE would make every flow-run process compile its modules
    # again (~1 s of CPU), which no installed worker pays
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

    from tests.infra.postgres import start_embedded_postgres
    from tests.infra.seaweedfs import S3Server

    base = Path(tempfile.mkdtemp(prefix="bench-run-start-"))
    server_url, stop_pg = start_embedded_postgres(base / "pgdata")
    s3 = S3Server(base_dir=base / "s3")
    s3.start()
    try:
        with studio_cluster(base / "cluster", server_url, s3,
                            comfyui_latency=(0.2, 0.3), replicate_latency=(0.2, 0.3)) as cluster:
            asyncio.run(bench(cluster, args))
    finally:
        s3.shutdown()
        stop_pg()


if __name__ == "__main__":
    main()
