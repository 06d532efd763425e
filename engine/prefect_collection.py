"""What Prefect's own processes load of this package: its `prefect.collections` entry point.

Why: a `prefect worker start` process never imports the project, yet it sits on every
deployment run's start. For each run it submits it opens two Prefect API clients (the
flow-run executor's and its cancellation observer's), and each parses certifi's CA bundle
for an SSL context of its own, even for a plain-http API (PrefectHQ/prefect#19106; issue
20 measured ~0.1 s of the worker's CPU per run there, between Pending and Running).
Prefect loads every installed collection when a worker looks up its type
(`prefect.plugins.load_prefect_collections`, the way integrations such as prefect-aws
register worker types and blocks), so importing this module is the documented door into
the worker: it installs engine/ssl_reuse.py there, as flow-run processes already do, and
engine/worker_wake.py (a worker at its `--limit` polls as soon as one of its runs ends).

Kept cheap and side-effect free beyond that: the server and block registration load
collections too, and the worker reports this package (name and version) in its metadata,
which Prefect's UI shows on the worker's page.
"""

from __future__ import annotations

import sys

from engine import ssl_reuse

ssl_reuse.install()
if "prefect.workers.base" in sys.modules:  # a worker looking up its type: not the server
    from engine import worker_wake

    worker_wake.install()
