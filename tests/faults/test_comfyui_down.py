"""Fault (d): one host's ComfyUI is down (that worker's COMFYUI_ENDPOINT is a dead port).

Two process workers share the PostgreSQL database and the S3 store; worker A's ComfyUI
does not answer, worker B's does. Batches that land on A must still deliver every piece
through the next provider (Replicate), each piece bought once, within the caps, and
leave no slot held. Slow (about 2-3 minutes): `make faults`.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.faults.worker_cluster import (
    FAULT_SUITE,
    batch_facts,
    dead_endpoint,
    print_fault_row,
    started_cluster,
)

pytestmark = FAULT_SUITE

PIECES = 10
BATCHES = 4
CAPS = {"comfyui": 10, "replicate": 5}


@pytest.fixture
def cluster(tmp_path, postgres_url, s3_server):
    with started_cluster(tmp_path / "cluster", postgres_url, s3_server) as started:
        yield started


async def test_one_hosts_comfyui_down_still_delivers_every_piece_once(cluster) -> None:
    # each host takes two batches at a time, so both hosts get some of the four
    cluster.start_worker("worker-a", limit=BATCHES // 2, COMFYUI_ENDPOINT=dead_endpoint())
    started = time.monotonic()
    ran_on: dict[str, set[str]] = {}
    async with cluster.client() as client:
        runs = [await cluster.submit(client, PIECES) for _ in range(BATCHES // 2)]
        deadline = time.monotonic() + 180
        while not any(cluster.worker_running("worker-a", r) for r in runs):
            assert time.monotonic() < deadline, "worker-a never started a batch"
            await asyncio.sleep(0.5)
        cluster.start_worker("worker-b", limit=BATCHES // 2)
        runs += [await cluster.submit(client, PIECES) for _ in range(BATCHES - len(runs))]

        deadline = time.monotonic() + 600
        while True:
            for run_id in runs:
                for worker in cluster.workers:
                    if cluster.worker_running(worker, run_id):
                        ran_on.setdefault(worker, set()).add(run_id)
            facts = {r: batch_facts(cluster, r) for r in runs}
            if all(f["status"] in ("completed", "failed") for f in facts.values()):
                break
            assert time.monotonic() < deadline, {r: f["status"] for r, f in facts.items()}
            await asyncio.sleep(1)
        all_done = time.monotonic() - started
        await asyncio.sleep(2)
        held = await cluster.slots_held(client)

    pieces = PIECES * BATCHES
    published = sum(len(f["published"]) for f in facts.values())
    rows = sum(f["rows"] for f in facts.values())
    distinct = sum(f["pieces"] for f in facts.values())
    objects = [key for f in facts.values() for key in f["objects"]]
    billed = int(cluster.comfyui.billed_jobs) + int(cluster.replicate.billed_jobs)
    on_a = ran_on.get("worker-a", set())
    providers_on_a = sorted({p for r in on_a for p in facts[r]["providers"]})
    print_fault_row(
        "d: one host's ComfyUI down",
        {
            "pieces delivered": f"{published}/{pieces}",
            "provider jobs billed vs pieces": f"{billed}/{pieces} (comfyui "
            f"{cluster.comfyui.billed_jobs}, replicate {cluster.replicate.billed_jobs})",
            "duplicate rows/objects": f"{rows - distinct}/{len(objects) - len(set(objects))}",
            "peak concurrency vs caps": f"comfyui {cluster.comfyui.counters.peak}/"
            f"{CAPS['comfyui']}, replicate {cluster.replicate.counters.peak}/{CAPS['replicate']}",
            "slots held at end": held,
            "time to recover": f"all {BATCHES} batches done {all_done:.0f} s after the first "
            f"submit; batches on worker-a {len(on_a)} (providers {providers_on_a}), "
            f"on worker-b {len(ran_on.get('worker-b', set()))}",
        },
    )
    assert all(f["status"] == "completed" for f in facts.values())
    assert published == pieces
    assert rows == distinct == pieces
    assert len(objects) == len(set(objects)) == pieces
    assert billed == pieces  # the dead ComfyUI billed nothing, nothing was bought twice
    on_b = ran_on.get("worker-b", set())
    assert on_a and on_b, "both hosts ran batches"
    assert providers_on_a == ["replicate"]  # A's pieces went to the next provider
    assert cluster.comfyui.billed_jobs > 0  # B's healthy ComfyUI served its batches
    assert cluster.comfyui.counters.peak <= CAPS["comfyui"]
    assert cluster.replicate.counters.peak <= CAPS["replicate"]
    assert held == {"comfyui": 0, "replicate": 0}
