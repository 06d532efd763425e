"""CPU a process worker spends on API clients for each run it submits, before and after
it loads the package's `prefect.collections` entry point (engine/prefect_collection.py).

WHY: for every run it submits, `prefect worker start` opens two Prefect API clients (the
flow-run executor's and its cancellation observer's), each building an SSL context from
certifi's bundle, between the run's Pending and its Running (issue 20). The worker loads
installed collections when it looks up its type; after that (engine/ssl_reuse.py) its
clients share one context. Both halves run in this one process, the same load: the
first measures Prefect's clients as they are, the second after the lookup the worker CLI
makes.

    PREFECT_API_URL=http://127.0.0.1:9/api .venv/bin/python bench/bench_worker_clients.py \
        [--runs 30]

(no server is contacted: building a client makes no request; the URL only keeps Prefect
from starting a temporary server, and an `https://` URL measures a TLS API's case.)
"""

from __future__ import annotations

import argparse
import statistics
import time


def two_clients_ms(runs: int) -> list[float]:
    from prefect.client.orchestration import get_client

    rows = []
    for _ in range(runs):
        started = time.process_time()
        get_client(), get_client()
        rows.append((time.process_time() - started) * 1000)
    return rows


def spread(rows: list[float]) -> str:
    return f"{statistics.median(rows):.1f} ms [{min(rows):.1f}-{max(rows):.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise SystemExit("set PREFECT_API_URL (see the docstring): no server is contacted")
    before = two_clients_ms(args.runs)
    from prefect.cli._worker_utils import _load_worker_class

    _load_worker_class("process")  # what `prefect worker start --type process` does
    after = two_clients_ms(args.runs)
    ratio = statistics.median(after) / statistics.median(before)
    print(f"worker CPU per submitted run on its two API clients ({args.runs} runs each, "
          f"median [min-max]): Prefect's own {spread(before)}, with the entry point "
          f"{spread(after)}; ratio {ratio:.3f}")


if __name__ == "__main__":
    main()
