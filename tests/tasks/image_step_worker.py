"""Run one batch's image step (its chunk subflows) in its own process; print a JSON summary.

Used by the two-process test: two of these run at once against the same emulators and
the same Prefect API, so the global provider caps must hold across both.
Usage: python -m tests.tasks.image_step_worker <batch_id> <pieces> <staging_root>
"""

from __future__ import annotations

import asyncio
import json
import sys

from studio.runtime_env import apply_prefect_defaults

apply_prefect_defaults()

from flows.image_chunk import image_chunk  # noqa: E402
from studio.types import AvatarRef, GeneratedImage, PieceSpec  # noqa: E402


async def main(batch_id: str, pieces: int, staging_root: str) -> dict[str, object]:
    avatar = AvatarRef(id="two-proc", name="P", niche="n",
                       lora_weights_url="https://w/loras/p.safetensors")
    specs = [
        PieceSpec(piece_id=f"{batch_id}-{i}", batch_id=batch_id, index=i,
                  prompt="a lighthouse at dusk", tier="capa1")
        for i in range(pieces)
    ]
    chunks = [specs[i : i + 10] for i in range(0, len(specs), 10)]
    results = await asyncio.gather(
        *(image_chunk(n, chunk, avatar, staging_root) for n, chunk in enumerate(chunks))
    )
    items = [item for chunk in results for item in chunk]
    providers = [i.provider for i in items if isinstance(i, GeneratedImage)]
    return {"made": len(providers), "failed": len(items) - len(providers), "providers": providers}


if __name__ == "__main__":
    summary = asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
    print("SUMMARY " + json.dumps(summary))
