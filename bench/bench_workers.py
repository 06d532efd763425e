"""6 batches submitted at once, on 1 worker vs 2: the split per worker and the wall-time ratio.

A real cluster as the README sets it up: `studio server` on PostgreSQL, `prefect deploy
--all`, `studio limits apply`, process workers started with `prefect worker start
--limit N` (default 3), a shared pipeline database, SeaweedFS as the S3 store, and the
ComfyUI (10 slots) and Replicate (5) emulators. Each round submits `--batches` batches
at once to one worker, then to two, and times until every batch row is completed.
Prints each round's split and wall times, then the medians and their ratio
(1 worker / 2 workers: above 1 means the second worker helps).

    .venv/bin/python bench/bench_workers.py [--rounds 3] [--batches 6] [--pieces 10] [--limit 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faults.studio_server import StudioServerCluster, studio_cluster  # noqa: E402
from tests.faults.worker_cluster import batch_facts  # noqa: E402


def stop_worker(cluster: StudioServerCluster, name: str) -> None:
    worker = cluster.workers.pop(name)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except Exception:
        os.killpg(worker.pid, signal.SIGKILL)


async def one_burst(
    cluster: StudioServerCluster, workers: list[str], batches: int, pieces: int, limit: int
) -> tuple[float, dict[str, int], int]:
    """Start `workers`, submit `batches` at once, wait for all; wall s, split, completed."""
    for name in workers:
        cluster.start_worker(name, limit=limit)
    await asyncio.sleep(3)  # the workers poll before the burst, as standing workers do
    async with cluster.client() as client:
        started = time.monotonic()
        ids = await asyncio.gather(*(cluster.submit(client, pieces) for _ in range(batches)))
        while True:
            statuses = [batch_facts(cluster, b)["status"] for b in ids]
            if all(s in ("completed", "failed") for s in statuses):
                break
            if time.monotonic() - started > 1800:
                raise SystemExit("batches did not finish in 30 minutes")
            await asyncio.sleep(1)
        wall = time.monotonic() - started
    split = {name: len(cluster.runs_of(name) & set(ids)) for name in workers}
    for name in workers:
        stop_worker(cluster, name)
    return wall, split, statuses.count("completed")


async def bench(cluster: StudioServerCluster, args: argparse.Namespace) -> None:
    one: list[float] = []
    two: list[float] = []
    for n in range(args.rounds):
        wall1, split1, ok1 = await one_burst(
            cluster, [f"solo-{n}"], args.batches, args.pieces, args.limit
        )
        wall2, split2, ok2 = await one_burst(
            cluster, [f"a-{n}", f"b-{n}"], args.batches, args.pieces, args.limit
        )
        one.append(wall1)
        two.append(wall2)
        print(f"round {n + 1}: 1 worker {wall1:6.1f} s split {list(split1.values())} "
              f"({ok1}/{args.batches} completed) | 2 workers {wall2:6.1f} s split "
              f"{list(split2.values())} ({ok2}/{args.batches} completed) | "
              f"ratio {wall1 / wall2:.2f}", flush=True)
    m1, m2 = statistics.median(one), statistics.median(two)
    print(f"\n{args.batches} batches x {args.pieces} pieces, worker --limit {args.limit}, "
          f"{args.rounds} round(s)")
    print(f"median wall: 1 worker {m1:.1f} s, 2 workers {m2:.1f} s")
    print(f"ratio 1 worker / 2 workers: {m1 / m2:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--pieces", type=int, default=10)
    parser.add_argument("--limit", type=int, default=3, help="prefect worker start --limit")
    args = parser.parse_args()

    from tests.infra.postgres import start_embedded_postgres
    from tests.infra.seaweedfs import S3Server

    base = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    server_url, stop_pg = start_embedded_postgres(base / "pgdata")
    s3 = S3Server(base_dir=base / "s3")
    s3.start()
    try:
        with studio_cluster(base / "cluster", server_url, s3) as cluster:
            asyncio.run(bench(cluster, args))
    finally:
        s3.shutdown()
        stop_pg()


if __name__ == "__main__":
    main()
