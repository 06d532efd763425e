"""Fault (c): 20 batches submitted at once to two workers (`--limit 3` each).

On `studio server` with PostgreSQL, a shared pipeline database and S3 store, and the
ComfyUI (10 slots) and Replicate (5) emulators: no batch is lost (each ends completed,
one row and one object per piece), neither worker runs more than its limit at once,
the provider caps are never passed (the emulators' peak in-flight counters), and no
slot is held at the end. Slow (about 3-6 minutes on 2 cores): `make faults`.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.faults.studio_server import CAPS, jobs_billed, peaks, studio_cluster
from tests.faults.worker_cluster import (
    FAULT_SUITE,
    batch_facts,
    print_fault_row,
)

pytestmark = FAULT_SUITE

BATCHES = 20
PIECES = 10
LIMIT = 3


@pytest.fixture
def cluster(tmp_path, postgres_url, s3_server):
    with studio_cluster(tmp_path / "cluster", postgres_url, s3_server) as started:
        yield started


async def test_twenty_batches_at_once(cluster) -> None:
    cluster.start_worker("worker-a", limit=LIMIT)
    cluster.start_worker("worker-b", limit=LIMIT)
    started = time.monotonic()
    async with cluster.client() as client:
        batch_ids = await asyncio.gather(
            *(cluster.submit(client, PIECES) for _ in range(BATCHES))
        )
        most_at_once = {"worker-a": 0, "worker-b": 0}
        deadline = time.monotonic() + 1200
        while time.monotonic() < deadline:
            for name in most_at_once:  # flow-run processes under each worker right now
                running = sum(cluster.worker_running(name, b) for b in batch_ids)
                most_at_once[name] = max(most_at_once[name], running)
            statuses = [batch_facts(cluster, b)["status"] for b in batch_ids]
            if all(s in ("completed", "failed") for s in statuses):
                break
            await asyncio.sleep(2)
        wall = time.monotonic() - started
        await asyncio.sleep(3)  # last releases reach the server
        held = await cluster.slots_held(client)
    facts = [batch_facts(cluster, b) for b in batch_ids]
    published = sum(len(f["published"]) for f in facts)
    rows = sum(f["rows"] for f in facts)
    pieces = sum(f["pieces"] for f in facts)
    objects = [key for f in facts for key in f["objects"]]
    split = {name: len(cluster.runs_of(name) & set(batch_ids)) for name in most_at_once}
    statuses = [f["status"] for f in facts]
    print_fault_row(
        "c: 20 batches at once",
        {
            "pieces delivered": f"{published}/{BATCHES * PIECES} "
            f"({statuses.count('completed')}/{BATCHES} batches completed)",
            "provider jobs billed vs pieces": f"{jobs_billed(cluster)}/{BATCHES * PIECES}",
            "duplicate rows/objects": f"{rows - pieces}/{len(objects) - len(set(objects))}",
            "peak concurrency vs caps": peaks(cluster),
            "slots held at end": held,
            "time to recover": f"all done in {wall:.0f} s; split {split}, "
            f"most at once per worker {most_at_once} (limit {LIMIT})",
        },
    )
    assert statuses == ["completed"] * BATCHES  # none lost
    assert rows == pieces == BATCHES * PIECES
    assert len(objects) == len(set(objects))
    assert sum(split.values()) == BATCHES
    assert max(most_at_once.values()) <= LIMIT
    assert cluster.comfyui.counters.peak <= CAPS["comfyui"]
    assert cluster.replicate.counters.peak <= CAPS["replicate"]
    assert not any(held.values())
