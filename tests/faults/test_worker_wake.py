"""A worker at its `--limit` starts the next run as soon as one of its runs ends
(engine/worker_wake.py), not at its next poll.

A real `studio server` on PostgreSQL, `prefect deploy --all`, and `prefect worker start
--limit 1` polling every 30 s: two 1-piece batches are created before the worker
starts; its first poll takes one (the limit holds the other back). Prefect's worker
alone would start the second at its next poll, 21-39 s later; with the wake-up it
starts within seconds of the first one's end.
"""

from __future__ import annotations

import asyncio
import time

from tests.faults.studio_server import studio_cluster

QUERY_SECONDS = 30


async def test_the_run_held_back_by_the_limit_starts_when_the_first_ends(
    tmp_path, postgres_url, s3_server
):
    from prefect.client.schemas.objects import StateType

    with studio_cluster(tmp_path / "cluster", postgres_url, s3_server) as cluster:
        async with cluster.client() as client:
            runs = [await cluster.submit(client, 1) for _ in range(2)]
            cluster.start_worker("wake", limit=1,
                                 PREFECT_WORKER_QUERY_SECONDS=str(QUERY_SECONDS))
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline:
                found = [await client.read_flow_run(r) for r in runs]
                if all(f.state_type == StateType.COMPLETED for f in found):
                    break
                await asyncio.sleep(0.5)
            first, second = sorted(found, key=lambda r: r.start_time or r.created)
            history = await client.read_flow_run_states(str(second.id))
    assert [r.state_type for r in found] == [StateType.COMPLETED] * 2, found
    pending = min(s.timestamp for s in history if s.type == StateType.PENDING)
    waited = (pending - first.end_time).total_seconds()
    print(f"\n[WORKER WAKE] first run ended -> next run Pending in {waited:.2f} s")
    assert waited < 5.0, f"the held-back run waited {waited:.1f} s for the worker's poll"
