"""One Prefect sync API client for all the sync task runs of a batch.

WORKAROUND (one module, outside tasks/): a sync task called from an async flow finds no
`SyncClientContext` in its context (the flow holds an async one), so Prefect opens a
new `SyncPrefectClient` for every such task run; opening one builds an SSL context
(`load_verify_locations`), ~70 ms of CPU each on this machine even for a plain-http
loopback API: about a second of a 5-piece batch went to it (py-spy, see issue 11's note).
Upstream: PrefectHQ/prefect#14986 ("use less clients") cut the same cost elsewhere in
the engine, and PrefectHQ/prefect#19106 (custom SSL contexts, open) would let clients
share one. Until then the batch enters Prefect's own `SyncClientContext` once; the task
engine's `SyncClientContext.get_or_create()` then reuses it for every sync task run.

The clients a process still opens (the engine's, the flow's, the log and event workers')
share one SSL context from the moment this module is imported (engine/ssl_reuse.py):
the flows import it, so that covers every process that runs them (a worker's flow-run
process, `python -m deployments.serve`, an in-process `studio batch run`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prefect.context import SyncClientContext

from engine import ssl_reuse

ssl_reuse.install()  # idempotent; before the flow engine opens its clients


@contextlib.contextmanager
def shared_sync_client() -> Iterator[None]:
    """Sync task runs inside the block share one API client (Prefect's own context)."""
    with SyncClientContext.get_or_create():
        yield
