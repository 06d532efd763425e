"""Moderating a staged image: inline (base64 data URL) vs a short-lived presigned URL.

    .venv/bin/python bench/bench_moderation_image_ref.py [--images 20] [--size-kb 1500]

The OpenAI SDK calls the loopback moderation emulator; the image is staged in the
loopback SeaweedFS S3 server (the private staging bucket). Inline: read the staged file
and base64 it into the request. Presigned: sign a 300 s GET of the staged object and send
the URL. Prints request bytes and client wall time per image for both, and the ratios.
The emulator does not fetch a presigned URL (OpenAI would, from its side), so the
presigned figure leaves out the provider's download: it measures what our side saves.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--size-kb", type=int, default=1500, help="a 1024x1024 PNG is ~1.5 MB")
    args = parser.parse_args()

    from openai import OpenAI

    from studio.moderation.openai_moderator import data_url
    from studio.staging import RemoteStaging
    from tests.emulators.openai_api import OpenAIModerationEmulator
    from tests.infra.seaweedfs import S3Server

    image = os.urandom(args.size_kb * 1024)
    emulator = OpenAIModerationEmulator(api_key="sk-bench")
    with tempfile.TemporaryDirectory() as tmp, emulator as openai:
        server = S3Server(Path(tmp) / "s3")
        server.start()
        try:
            bucket = server.new_bucket("staging")
            remote = RemoteStaging(server.client(), bucket)
            local = Path(tmp) / "piece.png"
            local.write_bytes(image)
            remote.put(remote.key("bench", "piece.png"), image, "image/png")
            client = OpenAI(api_key="sk-bench", base_url=f"{openai.url}/v1", max_retries=0)

            def moderate(url: str) -> None:
                client.moderations.create(
                    model="omni-moderation-latest",
                    input=[{"type": "image_url", "image_url": {"url": url}}],
                )

            timings: dict[str, list[float]] = {"inline": [], "presigned": []}
            sizes: dict[str, int] = {}
            for _ in range(args.images):
                start = time.perf_counter()
                url = data_url(str(local))
                moderate(url)
                timings["inline"].append(time.perf_counter() - start)
                sizes["inline"] = len(url)
                start = time.perf_counter()
                url = remote.presigned_get(remote.key("bench", "piece.png"), seconds=300)
                moderate(url)
                timings["presigned"].append(time.perf_counter() - start)
                sizes["presigned"] = len(url)
        finally:
            server.shutdown()
    inline, presigned = (statistics.median(timings[k]) for k in ("inline", "presigned"))
    print(f"image {args.size_kb} KB, {args.images} calls each, median per call:")
    for name, median in (("inline", inline), ("presigned", presigned)):
        print(f"  {name:<9} : {sizes[name]:>9} request bytes of image, {median * 1000:7.1f} ms")
    print(f"  ratio inline/presigned: bytes {sizes['inline'] / sizes['presigned']:.0f}x, "
          f"time {inline / presigned:.2f}x")


if __name__ == "__main__":
    main()
