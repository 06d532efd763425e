"""Run one content batch in this process, with probes, for the kill -9 tests.

    python -m tests.storage.crash_runner --batch-id ID --pieces N --probe-dir DIR
        [--crash-at image:K | upload:K] [--resume] [--hold-at-render GO_FILE]

Probes (test-only, installed by patching classes in this process):
- every preview render that completes appends the piece id to DIR/renders.log;
- every piece sent to the hook writer / to moderation goes to DIR/hooks.log / checks.log;
- every PutObject that gets a response appends the key to DIR/puts.log;
- with --hold-at-render, the first render writes DIR/holding and waits for GO_FILE
  (a test starts a second run of the batch while this one holds it).
Renders and remote puts are serialised, so "crash at the K-th" means exactly K-1 done:
at the K-th render the runner first waits until the K-1 finished images are staged
and recorded as generated (the record is written in a thread after staging), then
sends itself SIGKILL (a real kill -9: no cleanup, no finally blocks).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import threading
import time
from pathlib import Path


def _append(path: Path, line: str) -> None:
    with open(path, "a") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _recorded_generated(piece_ids: list[str]) -> bool:
    """Every finished image's row says `generated` (recorded in a thread after staging)."""
    if not piece_ids:
        return True
    from sqlalchemy import func, select

    from studio.db.engine import session_scope
    from studio.db.models import ContentPiece

    with session_scope() as session:
        count = session.scalar(
            select(func.count())
            .select_from(ContentPiece)
            .where(ContentPiece.id.in_(piece_ids), ContentPiece.status == "generated")
        )
    return count == len(piece_ids)


def _install_render_probe(
    probe_dir: Path, crash_at: int | None, staging: Path, hold_for: Path | None = None
) -> None:
    from studio.providers.preview import PreviewRenderer

    original = PreviewRenderer.generate
    lock = threading.Lock()
    calls = {"n": 0}
    renders = probe_dir / "renders.log"

    async def probed(self, spec, avatar, job=None):  # type: ignore[no-untyped-def]
        while not lock.acquire(blocking=False):  # poll: waiting threads would starve to_thread
            await asyncio.sleep(0.01)
        try:
            calls["n"] += 1
            if hold_for is not None and calls["n"] == 1:
                _append(probe_dir / "holding", spec.piece_id)
                while not hold_for.exists():
                    await asyncio.sleep(0.05)
            if crash_at is not None and calls["n"] == crash_at:
                done = renders.read_text().split() if renders.exists() else []
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not (
                    all((staging / f"{piece}.json").exists() for piece in done)
                    and _recorded_generated(done)
                ):
                    await asyncio.sleep(0.05)
                _kill_self()
            result = await original(self, spec, avatar, job)
            _append(renders, spec.piece_id)
            return result
        finally:
            lock.release()

    PreviewRenderer.generate = probed  # type: ignore[method-assign]


def _install_upload_probe(probe_dir: Path, crash_at: int | None) -> None:
    import studio.storage.r2 as r2
    from studio.storage.r2 import R2ContentStore

    lock = threading.Lock()
    calls = {"n": 0}
    puts = probe_dir / "puts.log"

    class ProbedR2(R2ContentStore):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, **kwargs)

            self.client.meta.events.register("before-call.s3.PutObject", _record_params)
            self.client.meta.events.register("after-call.s3.PutObject", _log_completed)

        def put(self, piece_id, key, data, content_type, tier):  # type: ignore[no-untyped-def]
            with lock:
                calls["n"] += 1
                if crash_at is not None and calls["n"] == crash_at:
                    _kill_self()
                return super().put(piece_id, key, data, content_type, tier)

    local = threading.local()

    def _record_params(params, **_):  # type: ignore[no-untyped-def]
        local.url_path = params.get("url_path", "")

    def _log_completed(**_):  # type: ignore[no-untyped-def]
        _append(puts, getattr(local, "url_path", ""))

    # the registry imports the R2 store when it builds one (boto3 only when configured)
    r2.R2ContentStore = ProbedR2  # type: ignore[misc]


def _install_paid_call_probes(probe_dir: Path) -> None:
    """Log which pieces reach the (paid, in production) hook writer and moderation."""
    import tasks.check_safety as check_safety
    import tasks.write_hooks as write_hooks

    build_writer = write_hooks.build_hook_writer
    build_review = check_safety.build_safety_review

    class LoggedWriter:
        def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
            self.inner = inner

        async def write(self, specs, avatar, platform):  # type: ignore[no-untyped-def]
            for spec in specs:
                _append(probe_dir / "hooks.log", spec.piece_id)
            return await self.inner.write(specs, avatar, platform)

    class LoggedReview:
        def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
            self.inner = inner

        async def run(self, items, **kwargs):  # type: ignore[no-untyped-def]
            for item in items:
                _append(probe_dir / "checks.log", item.piece_id)
            return await self.inner.run(items, **kwargs)

    write_hooks.build_hook_writer = lambda *a, **k: LoggedWriter(build_writer(*a, **k))
    check_safety.build_safety_review = lambda *a, **k: LoggedReview(build_review(*a, **k))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-id", required=True)
    parser.add_argument("--pieces", type=int, default=10)
    parser.add_argument("--probe-dir", required=True, type=Path)
    parser.add_argument("--crash-at", default=None, help="image:K or upload:K")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--hold-at-render", default=None, type=Path)
    args = parser.parse_args()

    from studio.runtime_env import apply_prefect_defaults

    apply_prefect_defaults()
    from studio.settings import get_settings

    step, _, nth = (args.crash_at or ":").partition(":")
    staging = get_settings().work_dir.resolve() / args.batch_id
    crash_at = int(nth) if step == "image" else None
    _install_render_probe(args.probe_dir, crash_at, staging, args.hold_at_render)
    _install_upload_probe(args.probe_dir, int(nth) if step == "upload" else None)
    _install_paid_call_probes(args.probe_dir)

    if args.resume:
        from cli.storage import resume_batch

        result = resume_batch(args.batch_id)
        print(f"resume result: {result!r}"[:300], flush=True)
    else:
        from flows.content_batch import content_batch

        asyncio.run(
            content_batch(avatar_id="demo", num_pieces=args.pieces, batch_id=args.batch_id, seed=11)
        )


if __name__ == "__main__":
    main()
