"""Fault (b): a worker and its flow-run process are killed -9 mid image step.

Two process workers (own STUDIO_HOME each) share the PostgreSQL database and the S3
store. The worker running the batch is killed with everything under it while images
are being made. With no operator action, the zombie-run automation marks the lost run
Crashed when its heartbeats stop, the crash-recovery deployment starts a resume
(`resume_batch_id`, tagged `resumes:<run>`), the other worker runs it, and the batch
completes: billing again at most the images in flight at the kill, one row and one
object per piece. Slow (about 3-5 minutes): `make faults`.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from tests.faults.worker_cluster import (
    FAULT_SUITE,
    Cluster,
    batch_facts,
    generated_count,
    print_fault_row,
    started_cluster,
    wait_for,
)

pytestmark = FAULT_SUITE

PIECES = 30
RECOVERY_DEADLINE_S = 600  # the "within 10 minutes"
CAPS = {"comfyui": 10, "replicate": 5}


@pytest.fixture
def cluster(tmp_path, postgres_url, s3_server):
    with started_cluster(tmp_path / "cluster", postgres_url, s3_server) as started:
        yield started


def _jobs(cluster: Cluster) -> int:
    """Provider jobs billed so far (ComfyUI prompts run + Replicate predictions)."""
    return int(cluster.comfyui.billed_jobs) + int(cluster.replicate.billed_jobs)


def _submitted(cluster: Cluster) -> int:
    """Provider jobs asked for so far (each is billed once it runs, whoever waits for it)."""
    return cluster.comfyui.counters.requests("prompt") + cluster.replicate.counters.requests(
        "create"
    )


async def test_worker_killed_mid_image_step_is_recovered_by_the_other_worker(cluster) -> None:
    cluster.start_worker("worker-a")
    async with cluster.client() as client:
        run_id = await cluster.submit(client, PIECES)
        batch_id = run_id  # batch_id defaults to the flow run's id

        async def running_on_a() -> bool:
            return cluster.worker_running("worker-a", run_id)

        await wait_for("worker-a to start the batch", running_on_a, 180)
        cluster.start_worker("worker-b")  # the other host, up while A works

        async def mid_image_step() -> bool:
            made = generated_count(cluster, batch_id)
            return 6 <= made < PIECES - 6

        await wait_for("the image step to be under way", mid_image_step, 240, every=0.1)
        made_at_kill = generated_count(cluster, batch_id)
        asked_at_kill = _submitted(cluster)
        cluster.kill_worker("worker-a")
        killed_at = time.monotonic()
        in_flight = asked_at_kill - made_at_kill  # asked for, not yet recorded as made

        async def lost_run_crashed() -> bool:
            run = await client.read_flow_run(uuid.UUID(run_id))
            return bool(run.state and run.state.is_crashed())

        await wait_for("the lost run to be marked Crashed", lost_run_crashed, 300, every=2)
        crashed_after = time.monotonic() - killed_at

        async def batch_done() -> bool:
            return batch_facts(cluster, batch_id)["status"] in ("completed", "failed")

        await wait_for("the batch to be finished", batch_done, RECOVERY_DEADLINE_S, every=2)
        recovered_after = time.monotonic() - killed_at
        await asyncio.sleep(2)  # the resume run's last calls (artifact, state) settle
        facts = batch_facts(cluster, batch_id)
        lost = await client.read_flow_run(uuid.UUID(run_id))
        held = await cluster.slots_held(client)

    billed = _jobs(cluster)
    published = len(facts["published"])
    print_fault_row(
        "b: worker + flow run kill -9",
        {
            "pieces delivered": f"{published}/{PIECES} ({facts['status']})",
            "provider jobs billed vs pieces": f"{billed}/{PIECES} "
            f"(in flight at kill {in_flight}, bought again {billed - PIECES})",
            "duplicate rows/objects": f"{facts['rows'] - facts['pieces']}/"
            f"{len(facts['objects']) - len(set(facts['objects']))}",
            "peak concurrency vs caps": f"comfyui {cluster.comfyui.counters.peak}/"
            f"{CAPS['comfyui']}, replicate {cluster.replicate.counters.peak}/{CAPS['replicate']}",
            "slots held at end": held,
            "time to recover": f"Crashed after {crashed_after:.0f} s, "
            f"batch {facts['status']} after {recovered_after:.0f} s",
            "resumed by": [(e["by"], e["resumes"]) for e in facts["resumes"]],
        },
    )
    assert facts["status"] == "completed"
    assert lost.state is not None and lost.state.is_crashed()  # never left Running
    assert facts["rows"] == PIECES and facts["pieces"] == PIECES
    assert sorted(facts["objects"]) == sorted(r.storage_key for r in facts["published"])
    assert facts["staged"] == []  # a completed batch's staging is deleted
    assert billed - PIECES <= in_flight  # paid again at most for what was in flight
    assert facts["resumes"] and facts["resumes"][-1]["by"] == "crash-recovery"
    assert facts["resumes"][0]["resumes"] == run_id
    assert cluster.comfyui.counters.peak <= CAPS["comfyui"]
    assert cluster.replicate.counters.peak <= CAPS["replicate"]
    assert recovered_after < RECOVERY_DEADLINE_S
