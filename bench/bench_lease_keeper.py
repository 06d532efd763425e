"""What a provider slot's lease costs the process that holds it: Prefect's keeper started
at once (Prefect's own behaviour) against started only once a lease has been held
`KEEPER_DELAY_FRACTION` of its duration (engine/provider_slots.py).

WHY: since PrefectHQ/prefect#21925 Prefect's lease keeper is a thread with its own sync
API client that renews the lease the moment it starts; an image's lease is back within
seconds, so that thread, client and renewal bought nothing. This acquires and gives back
`--cycles` x 3 leases of a real `provider:modal` limit on a `prefect server start` of its
own, each held `--hold` seconds, alternating the two modes, and prints the process CPU
per lease (user+system of this process, threads included) and the ratio.

    .venv/bin/python bench/bench_lease_keeper.py [--rounds 2] [--cycles 10] [--hold 0.3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faults.worker_cluster import free_port  # noqa: E402

SLOTS = 3


async def cycle_cpu(delayed: bool, cycles: int, hold: float) -> float:
    """CPU seconds per lease over `cycles` rounds of SLOTS leases held `hold` s."""
    from engine import provider_slots
    from engine.provider_slots import LeasePool

    provider_slots.KEEPER_DELAY_FRACTION = 0.25 if delayed else 0.0
    pool = LeasePool("modal", SLOTS, poll_seconds=0.02, linger_seconds=0.0)
    started = time.process_time()
    for _ in range(cycles):
        leases = [await pool.acquire() for _ in range(SLOTS)]
        await asyncio.sleep(hold)
        for lease in leases:
            pool.release(lease)
        await pool.release_idle()
    await asyncio.sleep(0.5)  # the keepers' threads wind down
    cpu = time.process_time() - started
    await pool.drain()
    return cpu / (cycles * SLOTS)


async def bench(args: argparse.Namespace) -> None:
    from prefect.settings import get_current_settings

    from deployments.concurrency_limits import apply_provider_limits
    from studio.providers.settings import ProviderSettings

    print(f"Prefect API: {get_current_settings().api.url}", flush=True)
    os.environ["MODAL_MAX_CONCURRENT"] = str(SLOTS)
    await apply_provider_limits(ProviderSettings(_env_file=None))
    await cycle_cpu(True, 1, 0.0)  # clients, imports
    runs: dict[str, list[float]] = {"at once": [], "delayed": []}
    for n in range(args.rounds):
        for mode in runs:
            per_lease = await cycle_cpu(mode == "delayed", args.cycles, args.hold)
            runs[mode].append(per_lease)
            print(f"round {n + 1} keeper {mode}: {1000 * per_lease:.1f} ms CPU per lease",
                  flush=True)
    medians = {mode: statistics.median(values) for mode, values in runs.items()}
    for mode, values in runs.items():
        print(f"keeper {mode}: {1000 * medians[mode]:.1f} ms per lease "
              f"[{1000 * min(values):.1f}-{1000 * max(values):.1f}]")
    print(f"delayed / at once: {medians['delayed'] / medians['at once']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--hold", type=float, default=0.3, help="seconds each lease is held")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench-keeper-"))
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/api"
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        os.environ.update({"PREFECT_API_URL": url, "PREFECT_HOME": str(home)})
        asyncio.run(bench(args))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
