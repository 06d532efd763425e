"""Benchmark of the image step: a 50-piece batch's images against the provider emulators.

Spec latencies (seeded): ComfyUI 0-2 s with 30% failures, Modal 10-15 s (1% failures),
Replicate 8-12 s; caps from the spec (10/3/5) held by Prefect global concurrency
limits on a temporary Prefect server. The image step runs exactly as in a batch (it is
the batch's own `_generate_images`): concurrent image-chunk subflows of <=10 pieces, each
running ONE `generate-images-<chunk>` task run that makes its pieces concurrently through
the chain.

Printed, per strategy (the default order, then PROVIDER_STRATEGY=speed):
- wall: the image step's wall time;
- lower bound: the shortest time the caps and the emulators' drawn latencies allow for
  the SAME routing decisions (each piece's sequence of provider calls and backoffs),
  computed from this run: max(longest piece chain, per provider and per release time
  r: r + max(work released from r on / cap, the ceil(n/cap) shortest of those calls
  back to back) + the shortest remaining tail);
- ratio = wall / lower bound (target <= 1.10 at the spec's latencies);
- overhead per piece (target <= 20 ms): per piece, the time from its chunk's task run
  start to its chain's start (what the task run does before the piece may call a
  provider), plus the staging done after the chain returned, plus, per provider call,
  the chain-observed call time minus the emulator's generation time (HTTP, polling).
  A piece no longer has a task run of its own, so what Prefect does per chunk (register
  the subflow and its task run) is printed beside it as start-up (step start to chunk
  task run start, a latency the pieces of a chunk share; the wall / lower bound ratio
  counts it); on a small machine the wall figures include waiting for a CPU, so the CPU
  time the orchestrating process (and the Prefect server) spent per piece is printed too.
Also printed: when the pieces' chains started after the step's start (the time a
piece waits for Prefect before it may call a provider).
The emulators run in their own process (reached by URL, like the real services).

The provider slots are held by the project's lease pool (engine/provider_slots.py,
`--slots pool`) or by Prefect's own `concurrency()` around each call (`--slots
concurrency`), the baseline the pool must beat to keep its lines. The server runs with
PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS=`--slot-wait` (the bound
on the Retry-After a refused waiter sleeps; the project's servers run with 1 s).

Usage: python bench/bench_images.py [--scale 0.1] [--pieces 50] [--seed 7]
       [--slots pool|concurrency] [--slot-wait 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
from studio.runtime_env import apply_prefect_defaults  # noqa: E402

apply_prefect_defaults()

SPEC = {  # provider: (latency range s, failure rate, cap)
    "comfyui": ((0.0, 2.0), 0.30, 10),
    "modal": ((10.0, 15.0), 0.01, 3),
    "replicate": ((8.0, 12.0), 0.0, 5),
}
ATTEMPT = re.compile(
    r"provider_attempt piece=(\S+) provider=(\S+) attempt=(\d+) duration=([0-9.]+)s "
    r"outcome=(\S+)"
)


class AttemptLog(logging.Handler):
    """Collects the chain's provider_attempt lines (piece, provider, attempt, outcome)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.rows: list[tuple[str, str, int, float, str]] = []
        self.first_start = float("inf")  # perf_counter of the earliest call's start

    def emit(self, record: logging.LogRecord) -> None:
        match = ATTEMPT.search(record.getMessage())
        if match:
            piece, provider, attempt, duration, outcome = match.groups()
            self.rows.append((piece, provider, int(attempt), float(duration), outcome))
            self.first_start = min(self.first_start, time.perf_counter() - float(duration))


class ChainWindows:
    """Each piece's chain window (wall-clock start, end) and the end of its staging, for
    the task overhead: what a task run spends outside its chain, wherever it starts."""

    def __init__(self) -> None:
        self.spans: dict[str, tuple[float, float, float]] = {}

    def install(self) -> ChainWindows:
        import tasks.generate_images as generate_images
        from studio.providers.chain import ProviderChain

        self._generate, self._produce = ProviderChain.generate, generate_images.produce_image
        generate, produce, spans = self._generate, self._produce, self.spans
        chain_ends: dict[str, tuple[float, float]] = {}

        async def timed_generate(chain, spec, avatar):  # type: ignore[no-untyped-def]
            start = time.time()
            try:
                return await generate(chain, spec, avatar)
            finally:
                chain_ends[spec.piece_id] = (start, time.time())

        async def timed_produce(spec, avatar, staging_root, staging=None):  # type: ignore[no-untyped-def]
            try:
                return await produce(spec, avatar, staging_root, staging)
            finally:
                if spec.piece_id in chain_ends:
                    spans[spec.piece_id] = (*chain_ends[spec.piece_id], time.time())

        ProviderChain.generate = timed_generate  # type: ignore[method-assign]
        generate_images.produce_image = timed_produce
        return self

    def uninstall(self) -> None:
        import tasks.generate_images as generate_images
        from studio.providers.chain import ProviderChain

        ProviderChain.generate = self._generate  # type: ignore[method-assign]
        generate_images.produce_image = self._produce


@dataclass
class Call:
    provider: str
    latency: float  # the emulator's generation time
    observed: float  # the chain's measured call time
    backoff_before: float = 0.0


@dataclass
class Run:
    strategy: str
    wall: float
    calls: dict[str, list[Call]] = field(default_factory=dict)
    task_overhead: list[float] = field(default_factory=list)  # per piece, s (see module)
    chunk_startup: list[float] = field(default_factory=list)  # per chunk task run, s
    served: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    first_call: float = 0.0  # seconds from the step's start to the first provider call
    cpu_client: float = 0.0  # CPU seconds this (orchestrating) process used in the step
    cpu_server: float = 0.0  # CPU seconds the Prefect server process used in the step
    chain_start_delay: list[float] = field(default_factory=list)  # per piece, from step start


def lower_bound(run: Run, caps: dict[str, int]) -> float:
    """max(longest piece chain, max over providers of the P|r_j,q_j|Cmax relaxation bound)."""
    chains = []
    jobs: dict[str, list[tuple[float, float, float]]] = defaultdict(list)  # r, d, q
    for calls in run.calls.values():
        total = sum(c.backoff_before + c.latency for c in calls)
        chains.append(total)
        elapsed = 0.0
        for call in calls:
            elapsed += call.backoff_before
            release = elapsed
            elapsed += call.latency
            jobs[call.provider].append((release, call.latency, total - elapsed))
    bound = max(chains, default=0.0)
    for provider, provider_jobs in jobs.items():
        cap = caps[provider]
        provider_jobs.sort()
        for k in range(len(provider_jobs)):
            later = provider_jobs[k:]
            work = sum(d for _, d, _ in later)
            tail = min(q for _, _, q in later)
            # calls are not divisible: some slot runs ceil(n/cap) of them back to back
            shortest = sorted(d for _, d, _ in later)[: -(-len(later) // cap)]
            bound = max(bound, later[0][0] + max(work / cap, sum(shortest)) + tail)
    return bound


def fifo_replay(run: Run, caps: dict[str, int], order: list[str]) -> float:
    """Makespan of the same calls under a zero-overhead orchestrator that queues each
    provider first-come first-served (every piece ready at 0, in piece order)."""
    import heapq

    free: dict[str, list[float]] = {p: [0.0] * cap for p, cap in caps.items()}
    ready = [(0.0, n, pid, 0) for n, pid in enumerate(order) if pid in run.calls]
    heapq.heapify(ready)
    end = 0.0
    while ready:
        at, n, pid, step = heapq.heappop(ready)
        call = run.calls[pid][step]
        at += call.backoff_before
        slots = free[call.provider]
        slot = min(range(len(slots)), key=slots.__getitem__)
        finish = max(at, slots[slot]) + call.latency
        slots[slot] = finish
        end = max(end, finish)
        if step + 1 < len(run.calls[pid]):
            heapq.heappush(ready, (finish, n, pid, step + 1))
    return end


def _serve_emulators(scale: float, seed: int, conn) -> None:  # type: ignore[no-untyped-def]
    """Child process: run the three emulators until told to stop, then send their records."""
    from tests.emulators.base import Behaviour
    from tests.emulators.comfyui import ComfyUIEmulator
    from tests.emulators.modal_endpoint import ModalEndpointEmulator
    from tests.emulators.replicate_api import ReplicateEmulator

    def behaviour(name: str, offset: int) -> Behaviour:
        (lo, hi), failures, _ = SPEC[name]
        return Behaviour(seed=seed + offset, latency=(lo * scale, hi * scale),
                         failure_rate=failures)

    emulators = {
        "comfyui": ComfyUIEmulator(behaviour("comfyui", 0)),
        "modal": ModalEndpointEmulator(behaviour("modal", 1), token_id="bench-key",
                                       token_secret="bench-secret"),
        "replicate": ReplicateEmulator(behaviour("replicate", 2), token="r8_bench"),
    }
    for emulator in emulators.values():
        emulator.start()
    conn.send({name: emulator.url for name, emulator in emulators.items()})
    conn.recv()
    conn.send({name: list(emulator.records) for name, emulator in emulators.items()})
    for emulator in emulators.values():
        emulator.stop()


class EmulatorProcess:
    """The emulators in their own process, so they share no interpreter lock with the
    orchestration being measured (they are reached by URL, as the real services are)."""

    def __init__(self, scale: float, seed: int) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_serve_emulators, args=(scale, seed, child), daemon=True
        )
        self.urls: dict[str, str] = {}

    def start(self) -> EmulatorProcess:
        self._process.start()
        self.urls = self._conn.recv()
        return self

    def stop(self) -> dict[str, list[tuple[str, float, bool]]]:
        self._conn.send("stop")
        records = self._conn.recv()
        self._process.join(timeout=30)
        return records


SERVER_PID: list[int] = []


def _cpu_seconds() -> tuple[float, float]:
    """(this process's CPU seconds, the Prefect server process tree's CPU seconds)."""
    try:
        import psutil
    except ImportError:  # optional: without it only the wall-clock overhead is printed
        return 0.0, 0.0

    own = psutil.Process().cpu_times()
    server = 0.0
    if SERVER_PID:
        root = psutil.Process(SERVER_PID[0])
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                server += times.user + times.system
    return own.user + own.system, server


def seed_keys(piece_ids: list[str]) -> dict[str, str]:
    from studio.providers.comfyui import seed_for

    keys = {}
    for pid in piece_ids:
        keys[f"studio_{pid}"] = pid
        keys[str(seed_for(pid))] = pid
        keys[str(seed_for(pid) % 2**31)] = pid
    return keys


async def run_image_step(strategy: str, args: argparse.Namespace, home: Path) -> Run:
    from prefect import flow
    from prefect.client.orchestration import get_client

    import tasks.generate_images as generate_images
    from flows.content_batch import _generate_images as batch_image_step
    from studio.bootstrap import initialise
    from studio.settings import get_settings
    from studio.types import AvatarRef, GeneratedImage, PieceSpec
    scale = args.scale
    emulators = EmulatorProcess(scale, args.seed).start()
    os.environ.update({
        "COMFYUI_ENABLED": "true",
        "COMFYUI_ENDPOINT": emulators.urls["comfyui"],
        "COMFYUI_POLL_INTERVAL": f"{0.2 * scale:g}",
        "MODAL_SDXL_ENDPOINT": emulators.urls["modal"],
        "MODAL_TOKEN_ID": "bench-key",
        "MODAL_TOKEN_SECRET": "bench-secret",
        "REPLICATE_API_TOKEN": "r8_bench",
        "REPLICATE_BASE_URL": emulators.urls["replicate"],
        "REPLICATE_POLL_INTERVAL": f"{0.5 * scale:g}",
        "PROVIDER_BACKOFF_UNIT": f"{scale:g}",
        "PROVIDER_BREAKER_RECOVERY_SECONDS": f"{60 * scale:g}",
        "PROVIDER_STRATEGY": strategy,
        "STUDIO_HOME": str(home),
    })
    from studio.settings import reload_settings

    reload_settings()
    # the chain writes every provider call to the cost ledger, as in a batch: a database
    await asyncio.to_thread(initialise)
    generate_images._chain = None
    if args.slots == "concurrency":
        generate_images._chain = concurrency_chain()

    avatar = AvatarRef(id="bench", name="Bench", niche="fitness",
                       lora_weights_url="https://weights.example/loras/bench.safetensors")
    batch_id = f"bench-{strategy}-{int(time.time())}"
    specs = [
        PieceSpec(piece_id=f"{batch_id}-{i:03d}", batch_id=batch_id, index=i,
                  prompt="a bright studio portrait, neutral placeholder", tier="capa1",
                  template_id=f"tpl-{i}")
        for i in range(args.pieces)
    ]
    chunk_size = get_settings().image_chunk_size
    chunk_of = {spec.piece_id: spec.index // chunk_size for spec in specs}

    @flow(name="bench-image-step", log_prints=False)
    async def image_step() -> tuple[float, list]:
        generate_images.image_chain()  # built once, before the step (the batch does too)
        started = time.perf_counter()
        step_start.append(started)
        began_step.append(time.time())
        cpu_start.append(_cpu_seconds())
        # the batch's own image step: its chunk subflows, one generate-images task run each
        images, failures = await batch_image_step(specs, avatar, chunk_size)
        cpu_end.append(_cpu_seconds())
        return time.perf_counter() - started, [*images.values(), *failures.values()]

    windows = ChainWindows().install()
    attempts = AttemptLog()
    step_start: list[float] = []
    cpu_start: list[tuple[float, float]] = []
    cpu_end: list[tuple[float, float]] = []
    provider_log = logging.getLogger("studio.providers")
    provider_log.addHandler(attempts)
    provider_log.setLevel(logging.INFO)
    provider_log.propagate = False  # keep the console to the figures
    began = time.time()
    began_step: list[float] = []
    try:
        wall, items = await image_step()
    finally:
        windows.uninstall()
        provider_log.removeHandler(attempts)
        provider_log.propagate = True
        records = emulators.stop()

    run = Run(strategy=strategy, wall=wall, first_call=attempts.first_start - step_start[0])
    step_wall_start = began_step[0]
    run.chain_start_delay = [start - step_wall_start for start, _, _ in windows.spans.values()]
    run.cpu_client = cpu_end[0][0] - cpu_start[0][0]
    run.cpu_server = cpu_end[0][1] - cpu_start[0][1]
    images = {i.piece_id: i for i in items if isinstance(i, GeneratedImage)}
    run.failed = len(items) - len(images)
    for image in images.values():
        run.served[image.provider] = run.served.get(image.provider, 0) + 1

    # the emulators' drawn latencies, matched to the chain's attempts in order
    keys = seed_keys([s.piece_id for s in specs])
    latencies: dict[tuple[str, str], list[float]] = defaultdict(list)
    for name, provider_records in records.items():
        for key, latency, _ in provider_records:
            latencies[(keys.get(key, key), name)].append(latency)
    settings_backoff = {"comfyui": 1.0, "modal": 1.5, "replicate": 2.0}
    for piece, provider, attempt, observed, outcome in attempts.rows:
        if outcome == "skipped":
            continue
        drawn = latencies[(piece, provider)]
        latency = drawn.pop(0) if drawn else observed
        backoff = scale * settings_backoff[provider] ** (attempt - 1) if attempt > 1 else 0.0
        run.calls.setdefault(piece, []).append(Call(provider, latency, observed, backoff))

    # each chunk's task run start (Prefect's record) vs its pieces' chain windows
    async with get_client() as client:
        task_runs = await client.read_task_runs(limit=200)
    chunk_start: dict[int, float] = {}
    for task_run in task_runs:
        if not task_run.name.startswith("generate-images-") or not task_run.start_time:
            continue
        if task_run.start_time.timestamp() < began:
            continue  # the other strategy's
        chunk_start[int(task_run.name.rsplit("-", 1)[1])] = task_run.start_time.timestamp()
    run.chunk_startup = [start - step_wall_start for start in chunk_start.values()]
    for pid, (c_start, c_end, saved) in windows.spans.items():
        t_start = chunk_start.get(chunk_of[pid])
        if pid in images and t_start is not None:
            # before the piece may call a provider, inside its chunk's task run, plus
            # the staging after its chain
            run.task_overhead.append(max(c_start - t_start, 0.0) + max(saved - c_end, 0.0))
    return run


class PrefectConcurrencySlots:
    """Prefect's own `concurrency()` around each provider call (`--slots concurrency`).

    What the chain asks beyond the call, for speed routing (may a slot be free, wake me
    when one was freed), is answered from this process's own count, as `LocalSlots`
    does: no round trip, no polling of the server.
    """

    def __init__(self, caps: dict[str, int]) -> None:
        from studio.providers.slots import ReleaseSignal

        self.caps = caps
        self._held: dict[str, int] = defaultdict(int)
        self._released = ReleaseSignal()

    async def wait_for_release(self, timeout: float) -> None:
        await self._released.wait(timeout)

    def may_be_free(self, provider: str) -> bool:
        return provider not in self.caps or self._held[provider] < self.caps[provider]

    @contextlib.asynccontextmanager
    async def __call__(self, provider: str, *, wait: bool = True):  # type: ignore[no-untyped-def]
        from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency

        from engine.provider_slots import LEASE_SECONDS
        from studio.providers.entry import limit_name
        from studio.providers.slots import SlotBusy

        if provider not in self.caps:  # uncapped (the offline preview)
            yield
            return
        granted = False
        try:
            async with concurrency(
                limit_name(provider), lease_duration=LEASE_SECONDS, strict=True,
                max_retries=None if wait else 0,
            ):
                granted = True
                self._held[provider] += 1
                try:
                    yield
                finally:
                    self._held[provider] -= 1
        except ConcurrencySlotAcquisitionError as exc:
            refused = isinstance(exc.__cause__, httpx.HTTPStatusError) and (
                exc.__cause__.response.status_code == 423
            )
            if granted or wait or not refused:
                raise
            raise SlotBusy(provider) from None
        finally:
            if granted:
                self._released.notify()


def concurrency_chain():  # type: ignore[no-untyped-def]
    """The batch's chain with its slots held by `PrefectConcurrencySlots`."""
    from studio.ledger.jobs import ImageCallLedger
    from studio.providers.build import build_image_chain, caps
    from studio.providers.settings import ProviderSettings

    settings = ProviderSettings()
    slots = PrefectConcurrencySlots(caps(settings))
    return build_image_chain(settings, slot=slots, ledger=ImageCallLedger())


def report(run: Run, caps: dict[str, int]) -> dict[str, float]:
    bound = lower_bound(run, caps)
    replay = fifo_replay(run, caps, sorted(run.calls))
    calls = [c for cs in run.calls.values() for c in cs]
    call_overhead = sum(max(c.observed - c.latency, 0.0) for c in calls)
    pieces = max(len(run.calls), 1)
    task_overhead = sum(run.task_overhead) / max(len(run.task_overhead), 1)
    overhead_ms = (task_overhead + call_overhead / pieces) * 1000
    served = ", ".join(f"{k} {v}" for k, v in sorted(run.served.items()))
    print(f"--- strategy: {run.strategy}")
    print(f"pieces served: {served}; failed: {run.failed}; provider calls: {len(calls)}")
    print(f"image step wall time:           {run.wall:8.2f} s")
    print(f"lower bound (same routing):     {bound:8.2f} s")
    print(f"ratio wall / lower bound:       {run.wall / bound if bound else 0:8.3f}")
    print(f"zero-overhead FIFO replay:      {replay:8.2f} s (ratio {run.wall / replay:.3f}; "
          f"first provider call after {run.first_call:.2f} s)")
    print(f"orchestration overhead / piece: {overhead_ms:8.1f} ms wall "
          f"(in task run + staging {task_overhead * 1000:.1f} ms + calls "
          f"{call_overhead / pieces * 1000:.1f} ms)"
          f"; CPU {run.cpu_client / pieces * 1000:.1f} ms in this process"
          f" + {run.cpu_server / pieces * 1000:.1f} ms in the Prefect server")
    per_provider = defaultdict(list)
    for call in calls:
        per_provider[call.provider].append(max(call.observed - call.latency, 0.0) * 1000)
    print("call overhead by provider:      " + ", ".join(
        f"{p} {sum(v) / len(v):.1f} ms x {len(v)}" for p, v in sorted(per_provider.items())))
    startup = sorted(run.chunk_startup) or [0.0]
    print(f"chunk task run start-up:        {startup[len(startup) // 2] * 1000:8.1f} ms median, "
          f"{startup[-1] * 1000:.1f} ms last of {len(run.chunk_startup)} (step start to its "
          "generate-images task run: subflow + task run registration, shared by its pieces)")
    delays = sorted(run.chain_start_delay) or [0.0]
    print(f"chain start after step start:   {delays[0] * 1000:8.1f} ms first, "
          f"{delays[-1] * 1000:.1f} ms last (piece may start its provider calls)")
    return {"wall": run.wall, "bound": bound, "overhead_ms": overhead_ms}


@contextlib.contextmanager
def prefect_server(kind: str, tmp: Path, slot_wait: float) -> Iterator[str]:
    """A throwaway Prefect server on PostgreSQL (the scale-out setup) or SQLite."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from engine.local_server import EVENT_BATCHING

    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_UI_ENABLED": "false",
           **EVENT_BATCHING,  # as `studio server` and the local server run
           "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": f"{slot_wait:g}"}
    stop_db = None
    if kind == "postgres":
        from tests.infra.postgres import create_database, start_embedded_postgres

        server_url, stop_db = start_embedded_postgres(tmp / "pgdata")
        url = create_database(server_url, "prefect_bench")
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = url.replace(
            "postgresql+psycopg://", "postgresql+asyncpg://", 1
        )
    else:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = (
            f"sqlite+aiosqlite:///{tmp / 'prefect.db'}"
        )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    prefect = Path(sys.executable).with_name("prefect")
    server = subprocess.Popen(
        [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{port}/api"
    SERVER_PID[:] = [server.pid]
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the Prefect server did not start")
            time.sleep(0.5)
        with temporary_settings({PREFECT_API_URL: api}):
            yield api
    finally:
        server.terminate()
        server.wait(timeout=30)
        if stop_db is not None:
            stop_db()


async def main(args: argparse.Namespace) -> None:
    from deployments.concurrency_limits import apply_provider_limits
    from studio.providers.settings import ProviderSettings

    caps = {name: cap for name, (_, _, cap) in SPEC.items()}
    with (
        tempfile.TemporaryDirectory() as tmp,
        prefect_server(args.prefect_db, Path(tmp), args.slot_wait),
    ):
        await apply_provider_limits(ProviderSettings(_env_file=None))
        print(f"bench_images: {args.pieces} pieces, scale {args.scale:g}, seed {args.seed}, "
              f"caps {caps}, Prefect server on {args.prefect_db}, slots {args.slots}, "
              f"slot wait bound {args.slot_wait:g} s")
        walls = {}
        for strategy in args.strategies.split(","):
            run = await run_image_step(strategy, args, Path(tmp) / strategy)
            report(run, caps)
            walls[strategy] = run.wall
        if "speed" in walls:
            print(f"PROVIDER_STRATEGY=speed wall time: {walls['speed']:.2f} s"
                  + (f" (default order: {walls['default']:.2f} s)" if "default" in walls else ""))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every latency")
    parser.add_argument("--pieces", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--strategies", default="default,speed",
                        help="comma-separated PROVIDER_STRATEGY values to run")
    parser.add_argument("--prefect-db", choices=("postgres", "sqlite"), default="postgres",
                        help="the Prefect server's database (scale-out setups use PostgreSQL)")
    parser.add_argument("--slots", choices=("pool", "concurrency"), default="pool",
                        help="the lease pool (engine/provider_slots.py) or Prefect's concurrency()")
    parser.add_argument("--slot-wait", type=float, default=1.0,
                        help="the server's PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_"
                             "SLOT_WAIT_SECONDS")
    asyncio.run(main(parser.parse_args()))
