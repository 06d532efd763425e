"""Fault (a): the Prefect server is killed -9 and started again mid image step.

The server runs as the README says (`studio server`: leases in files that survive the
restart and expire, so no slot reconcile) on PostgreSQL, with two process workers, a shared
pipeline database and S3 store, and the ComfyUI (10 slots) and Replicate (5) emulators.
Three batches are making images when the server is killed; it is started again at the
same address at once. Every batch completes (by itself, or resumed by the crash
recovery if a run crashed while the server was away), no cap is passed, and no provider
slot is held 90 s after the batches end. Slow (about 2-4 minutes): `make faults`.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.studio_server import CAPS, jobs_billed, peaks, studio_cluster
from tests.faults.worker_cluster import (
    FAULT_SUITE,
    batch_facts,
    generated_count,
    print_fault_row,
    wait_for,
)

pytestmark = FAULT_SUITE

BATCHES = 3
PIECES = 20
SLOTS_FREE_WITHIN_S = 90  # the "no provider slot is held 90 s after"


@pytest.fixture
def cluster(tmp_path, postgres_url, s3_server):
    with studio_cluster(tmp_path / "cluster", postgres_url, s3_server) as started:
        yield started


async def test_server_killed_and_restarted_mid_image_step(cluster) -> None:
    cluster.start_worker("worker-a")
    cluster.start_worker("worker-b")
    async with cluster.client() as client:
        batch_ids = [await cluster.submit(client, PIECES) for _ in range(BATCHES)]

    async def made() -> int:
        return sum(generated_count(cluster, b) for b in batch_ids)

    async def mid_image_step() -> bool:
        return 5 <= await made() < BATCHES * PIECES - 15

    await wait_for("the image steps to be under way", mid_image_step, 300, every=0.1)
    made_at_kill = await made()
    leases_at_kill = len(cluster.lease_files())
    cluster.kill_server()
    killed_at = time.monotonic()
    cluster.start_server()  # same port, same PREFECT_HOME, same database
    down_for = time.monotonic() - killed_at

    async def all_done() -> bool:
        return all(
            batch_facts(cluster, b)["status"] in ("completed", "failed") for b in batch_ids
        )

    await wait_for("every batch to finish", all_done, 600, every=2)
    done_at = time.monotonic()
    async with cluster.client() as client:

        async def slots_free() -> dict[str, int] | None:
            held = await cluster.slots_held(client)
            return held if not any(held.values()) else None

        try:
            await wait_for("every provider slot to be free", slots_free,
                            SLOTS_FREE_WITHIN_S, every=1)
            freed_after = time.monotonic() - done_at
        except AssertionError:
            freed_after = None
        held = await cluster.slots_held(client)
    facts = [batch_facts(cluster, b) for b in batch_ids]
    published = sum(len(f["published"]) for f in facts)
    rows = sum(f["rows"] for f in facts)
    pieces = sum(f["pieces"] for f in facts)
    objects = [key for f in facts for key in f["objects"]]
    print_fault_row(
        "a: server kill -9 + restart",
        {
            "pieces delivered": f"{published}/{BATCHES * PIECES} "
            f"({', '.join(f['status'] or '-' for f in facts)})",
            "provider jobs billed vs pieces": f"{jobs_billed(cluster)}/{BATCHES * PIECES}",
            "duplicate rows/objects": f"{rows - pieces}/{len(objects) - len(set(objects))}",
            "peak concurrency vs caps": peaks(cluster),
            "slots held at end": held,
            "time to recover": f"server down {down_for:.1f} s (images made at kill "
            f"{made_at_kill}, leases on disk {leases_at_kill}); batches done "
            f"{done_at - killed_at:.0f} s after the kill; slots free "
            + (f"{freed_after:.0f} s after" if freed_after is not None else "NOT within 90 s"),
            "resumed": [len(f["resumes"]) for f in facts],
        },
    )
    assert [f["status"] for f in facts] == ["completed"] * BATCHES
    assert rows == pieces == BATCHES * PIECES
    assert len(objects) == len(set(objects))
    assert cluster.comfyui.counters.peak <= CAPS["comfyui"]
    assert cluster.replicate.counters.peak <= CAPS["replicate"]
    assert freed_after is not None and not any(held.values())
