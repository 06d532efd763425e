"""Timeline of the image step (diagnosis for bench_images): when each piece's image task
body starts, when its provider calls start and end, and how long Prefect's tag-limit
acquisition and the provider-limit lease increments take, relative to the step's start.

Usage: python bench/trace_images.py [--scale 1] [--strategies default]
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_images

EVENTS: list[tuple[float, str, str]] = []  # (perf_counter, kind, detail)
DURATIONS: dict[str, list[tuple[float, float]]] = defaultdict(list)  # kind: (start, end)


def _timed(kind: str, fn):  # type: ignore[no-untyped-def]
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            DURATIONS[kind].append((start, time.perf_counter()))

    return wrapper


def install() -> None:
    import prefect.concurrency._asyncio as pconc

    import engine.provider_slots as ps
    import tasks.generate_images as gi
    from studio.providers.comfyui import ComfyUIProvider
    from studio.providers.modal_endpoint import ModalSDXLProvider
    from studio.providers.replicate_flux import ReplicateFluxProvider

    pconc.aacquire_concurrency_slots_with_lease = _timed(
        "tag_acquire", pconc.aacquire_concurrency_slots_with_lease
    )
    pconc.arelease_concurrency_slots_with_lease = _timed(
        "tag_release", pconc.arelease_concurrency_slots_with_lease
    )
    ps.LeasePool._increment = _timed("lease_increment", ps.LeasePool._increment)
    ps.LeasePool._release_on_server = _timed("lease_release", ps.LeasePool._release_on_server)
    for cls in (ComfyUIProvider, ModalSDXLProvider, ReplicateFluxProvider):
        cls.generate = _timed(f"call_{cls.__name__}", cls.generate)
    from studio.staging import ImageStaging

    existing = ImageStaging.existing

    def traced_existing(self, piece_id):  # type: ignore[no-untyped-def]
        EVENTS.append((time.perf_counter(), "task_body", piece_id))
        return existing(self, piece_id)

    ImageStaging.existing = traced_existing
    chain = gi.image_chain

    def traced_chain():  # type: ignore[no-untyped-def]
        EVENTS.append((time.perf_counter(), "image_chain", ""))
        return chain()

    gi.image_chain = traced_chain


def summarise(t0: float) -> None:
    def rel(t: float) -> float:
        return t - t0

    for kind in ("task_body",):
        times = sorted(rel(t) for t, k, _ in EVENTS if k == kind)
        if times:
            print(f"{kind:18s} n={len(times):3d} first {times[0]:.3f} s  last {times[-1]:.3f} s")
    for kind, spans in sorted(DURATIONS.items()):
        spans = [s for s in spans if s[0] >= t0]
        if not spans:
            continue
        durs = sorted(e - s for s, e in spans)
        first = min(rel(s) for s, _ in spans)
        print(f"{kind:18s} n={len(durs):3d} first start {first:.3f} s  median "
              f"{durs[len(durs) // 2] * 1000:.1f} ms  max {durs[-1] * 1000:.1f} ms  "
              f"total {sum(durs):.2f} s")
    modal = sorted((rel(s), rel(e)) for s, e in DURATIONS.get("call_ModalSDXLProvider", []))
    if modal:
        print("modal calls (start-end):", " ".join(f"{s:.1f}-{e:.1f}" for s, e in modal))


async def main(args):  # type: ignore[no-untyped-def]
    install()
    original = bench_images.run_image_step

    async def run(strategy, a, home):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        EVENTS.clear()
        DURATIONS.clear()
        result = await original(strategy, a, home)
        first = [t for t, k, _ in EVENTS if k == "image_chain"]
        summarise(first[0] if first else t0)
        return result

    bench_images.run_image_step = run
    await bench_images.main(args)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--pieces", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--strategies", default="default")
    parser.add_argument("--prefect-db", default="postgres")
    parser.add_argument("--slots", choices=("pool", "concurrency"), default="pool")
    parser.add_argument("--slot-wait", type=float, default=1.0)
    asyncio.run(main(parser.parse_args()))
