"""A process that dies holding open ledger rows (for tests/ledger/test_dead_run_settle.py).

    python -m tests.ledger.dead_run_child chain <batch_id> <pieces>
    python -m tests.ledger.dead_run_child flow <batch_id> <pieces>

`chain`: the provider chain (real Replicate client, real ledger) makes `pieces` images
at once; `flow`: the content-batch flow makes a batch of `pieces` for avatar `demo`.
Providers come from the environment. The test kills this process with SIGKILL while
the calls are in flight (the emulator holds them), so nothing here settles anything.
"""

from __future__ import annotations

import asyncio
import sys

from studio.runtime_env import apply_prefect_defaults

apply_prefect_defaults()


async def chain(batch_id: str, pieces: int) -> None:
    from studio.ledger.jobs import ImageCallLedger
    from studio.providers.build import build_image_chain
    from tests.ledger.conftest import AVATAR, piece

    images = build_image_chain(ledger=ImageCallLedger())
    await asyncio.gather(*(images.generate(piece(i, batch_id), AVATAR) for i in range(pieces)))


async def flow(batch_id: str, pieces: int) -> None:
    from flows.content_batch import content_batch

    await content_batch(avatar_id="demo", num_pieces=pieces, batch_id=batch_id, seed=3)


if __name__ == "__main__":
    mode, batch, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    asyncio.run({"chain": chain, "flow": flow}[mode](batch, count))
