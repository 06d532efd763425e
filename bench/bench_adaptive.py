"""Fleet limits against a provider whose true capacity moves: static cap, oracle, adaptive.

Issue 20's bench. A real cluster as the README sets it up (`studio server` on PostgreSQL,
`prefect deploy --all`, `studio limits apply`, SeaweedFS as the S3 store, two process
workers `prefect worker start --limit N`), the Replicate emulator as the only image
provider (LORA_INFERENCE_PROVIDER_ORDER=replicate, 1-2 s a prediction) with a hidden true
capacity C: a create while C predictions are in flight answers 429 with Retry-After
(tests/emulators/capacity.py). REPLICATE_MAX_CONCURRENT is the ceiling (20). Batches
are fed continuously (`--outstanding` unfinished at any time); after a `--warmup` at
C = the ceiling (every mode at full speed, nothing throttled), C steps through `--steps`
(8, 3, 12 for 60 s each by default), so every step is a change. Three modes on the same
cluster:

- `static`: PROVIDER_LIMITS_ADAPTIVE=false, `provider:replicate` at the ceiling (20);
- `oracle`: PROVIDER_LIMITS_ADAPTIVE=false, and this bench sets `provider:replicate` to
  C at each change (the fleet that knows);
- `adaptive`: PROVIDER_LIMITS_ADAPTIVE=true, default knobs (engine/provider_pace.py).

Per mode: images per minute (predictions that succeeded at the provider in the window),
429s per image and the percent of creates throttled, the peak in flight once settled (in
each step's second half, or from 30 s on: the fleet's `provider:replicate` slots held,
sampled every `--sample` s; the provider's predictions running), and the time to
follow each change of C: from the change until the fleet's slots stay <= C for `--hold`
s and, for an increase, the provider has C-1 in flight (the capacity is used); and how
busy the provider was (predictions in flight over C, time-weighted). `--runs N` repeats
the modes in turn and prints medians with [min-max]; the goals (issue 20): adaptive >=
90 % of the oracle's images per minute, <= 5 % of its creates throttled, each change
followed within 30 s.

    .venv/bin/python bench/bench_adaptive.py [--runs 1] [--steps 8:60,3:60,12:60]
        [--step-seconds S] [--warmup 15] [--modes static,oracle,adaptive] [--pieces 50]
        [--outstanding 8] [--limit 3] [--ceiling 20] [--trace]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.faults.studio_server import StudioServerCluster  # noqa: E402
from tests.faults.worker_cluster import BIN, started_cluster  # noqa: E402

LIMIT = "provider:replicate"
MODES = ("static", "oracle", "adaptive")
GOAL_RATIO, GOAL_THROTTLED, GOAL_FOLLOW = 0.90, 5.0, 30.0


class AdaptiveCluster(StudioServerCluster):
    """The fault cluster with Replicate as the only image provider, capped at `ceiling`."""

    ceiling: int = 20

    def base_env(self) -> dict[str, str]:
        env = super().base_env()
        env.update({
            "LORA_INFERENCE_PROVIDER_ORDER": "replicate",
            "COMFYUI_ENABLED": "false",
            "REPLICATE_MAX_CONCURRENT": str(self.ceiling),
            # thousands of images a run: no budget may turn pieces into cached assets
            "BATCH_BUDGET_USD": "none",
            "AVATAR_DAILY_BUDGET_USD": "none",
        })
        return env


# -- what one mode measured -----------------------------------------------------------------
@dataclass
class Step:
    capacity: int
    start: float
    end: float


@dataclass
class Result:
    mode: str
    seconds: float
    images: int
    accepted: int
    refused: int
    fleet_peak: int
    provider_peak: int
    #: per step: seconds until followed (None: not within the step)
    follow: list[float | None]
    #: per step: the median of `provider:replicate`'s limit during it
    limits: list[float]
    #: predictions in flight / C over the steps, time-weighted (1.0: the capacity used)
    busy: float = 0.0
    batches: int = 0
    #: per step: the 429s answered during it
    refused_per_step: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def per_minute(self) -> float:
        return self.images * 60.0 / self.seconds if self.seconds else 0.0

    @property
    def throttled_pct(self) -> float:
        calls = self.accepted + self.refused
        return 100.0 * self.refused / calls if calls else 0.0

    @property
    def per_image(self) -> float:
        return self.refused / self.images if self.images else float("inf")


def follow_time(
    step: Step, previous: int, fleet: list[tuple[float, int, int]],
    provider: list[tuple[float, int]], hold: float,
) -> float | None:
    """Seconds from the step's start until the fleet's slots stay <= C for `hold` s and,
    when C rose, the provider first had C-1 in flight; None when not within the step."""
    samples = [(t, slots) for t, _, slots in fleet if step.start <= t <= step.end]
    stay: float | None = None
    for i, (t, slots) in enumerate(samples):
        if slots > step.capacity or t + hold > step.end:
            continue
        if all(s <= step.capacity for t2, s in samples[i:] if t2 <= t + hold):
            stay = t
            break
    if stay is None:
        return None
    reached = stay
    if step.capacity > previous:
        reach = next(
            (t for t, n in provider if step.start <= t <= step.end and n >= step.capacity - 1),
            None,
        )
        if reach is None:
            return None
        reached = max(stay, reach)
    return reached - step.start


def settled_part(step: Step) -> tuple[float, float]:
    """The part of a step after a change should have been followed: its second half, or
    from GOAL_FOLLOW seconds on when that comes sooner (the peaks are read there)."""
    return step.start + min(GOAL_FOLLOW, (step.end - step.start) / 2), step.end


def level_at(provider: list[tuple[float, int]], at: float, before: int) -> int:
    """Predictions in flight at time `at` (`before`: at the timeline's start)."""
    level = before
    for t, n in provider:
        if t > at:
            break
        level = n
    return level


def busy_share(steps: list[Step], provider: list[tuple[float, int]], before: int) -> float:
    """Predictions in flight over C, time-weighted across the steps (`before`: in flight
    at the first step's start)."""
    used = offered = 0.0
    for step in steps:
        offered += step.capacity * (step.end - step.start)
        level, at = before, step.start
        for t, n in provider:
            if t <= step.start:
                level = n
                continue
            if t > step.end:
                break
            used += level * (t - at)
            level, at = n, t
        used += level * (step.end - at)
        before = level
    return used / offered if offered else 0.0


# -- the cluster's side -----------------------------------------------------------------------
async def set_limit(client: Any, limit: int) -> None:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    await client.update_global_concurrency_limit(
        LIMIT, GlobalConcurrencyLimitUpdate(limit=limit, active=True)
    )


def tell_the_fleet(cluster: Any, limit: int) -> None:
    """The oracle's limit in the fleet's record too, as `studio limits apply` would write
    it: the workers' slot pools hold themselves to a limit below their cap only when the
    record says so (engine/provider_pace.py `limit_in_force`), so without this the oracle
    would be slower to follow than its knowledge allows."""
    cluster.run(
        str(BIN / "python"), "-c",
        "from studio.db.engine import session_scope\n"
        "from studio.db.provider_pace import applied\n"
        "with session_scope() as s:\n"
        f"    applied(s, 'replicate', {limit}, None)\n",
    )


def limit_history(cluster: Any, since: float) -> list[tuple[float, int, str]]:
    """(time.time(), to, reason) of every change of the replicate limit the fleet
    recorded from `since` (epoch seconds): the whole story, where the 0.5 s samples miss
    a probe raised and stepped back between two of them."""
    out = cluster.run(
        str(BIN / "python"), "-c",
        "import json\n"
        "from datetime import UTC, datetime\n"
        "from studio.db.engine import session_scope\n"
        "from studio.db.provider_pace import limit_changes\n"
        "with session_scope() as s:\n"
        f"    rows = limit_changes(s, datetime.fromtimestamp({since!r}, UTC), "
        "providers=['replicate'])\n"
        "print(json.dumps([[c.at.timestamp(), c.to_limit, c.reason] for c in rows]))\n",
    )
    rows = json.loads(out.strip().splitlines()[-1])
    return [(float(t), int(to), str(why)) for t, to, why in rows]


async def read_limit(client: Any) -> tuple[int, int]:
    limit = await client.read_global_concurrency_limit_by_name(LIMIT)
    return int(limit.limit), int(limit.active_slots)


async def unfinished(client: Any, ids: set[str]) -> set[str]:
    """The runs of `ids` not in a final state."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    if not ids:
        return set()
    runs = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(i) for i in ids])),
        limit=len(ids) + 10,
    )
    final = {str(r.id) for r in runs if r.state is not None and r.state.is_final()}
    return ids - final


async def feed(
    cluster: AdaptiveCluster, client: Any, pieces: int, outstanding: int,
    pending: set[str], submitted: list[str], stop: asyncio.Event,
) -> None:
    """Keep `outstanding` batches unfinished until `stop` (the workers never run dry)."""
    while not stop.is_set():
        pending.intersection_update(await unfinished(client, set(pending)))
        while len(pending) < outstanding and not stop.is_set():
            run_id = await cluster.submit(client, pieces)
            pending.add(run_id)
            submitted.append(run_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def sample(
    client: Any, samples: list[tuple[float, int, int]], stop: asyncio.Event, every: float
) -> None:
    """(time, limit, slots held) of `provider:replicate` every `every` seconds."""
    while not stop.is_set():
        with contextlib.suppress(Exception):  # a slow answer is a missing sample, no more
            limit, slots = await read_limit(client)
            samples.append((time.monotonic(), limit, slots))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


def stop_worker(cluster: AdaptiveCluster, name: str) -> None:
    worker = cluster.workers.pop(name)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except Exception:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)


async def wait_idle(client: Any, timeout: float) -> None:
    """Until no slot of `provider:replicate` is held (a previous mode's leases gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, slots = await read_limit(client)
        if slots == 0:
            return
        await asyncio.sleep(1)
    print(f"  warning: {LIMIT} still holds slots after {timeout:.0f} s", flush=True)


async def one_mode(
    cluster: AdaptiveCluster, mode: str, run: int, args: argparse.Namespace
) -> Result:
    replicate = cluster.replicate
    steps: list[tuple[float, int]] = args.steps
    cluster.run(str(BIN / "studio"), "limits", "apply")  # back to the ceiling
    replicate.capacity = args.ceiling  # the warm-up: C at the ceiling, nothing throttled
    replicate.capacity_retry_after = args.retry_after
    async with cluster.client() as client:
        await wait_idle(client, 120)
        adaptive = "true" if mode == "adaptive" else "false"
        names = [f"{mode}-{run}-{side}" for side in ("a", "b")]
        for name in names:
            cluster.start_worker(name, limit=args.limit, PROVIDER_LIMITS_ADAPTIVE=adaptive)
        stop, pending, submitted = asyncio.Event(), set[str](), []
        samples: list[tuple[float, int, int]] = []
        feeder = asyncio.create_task(
            feed(cluster, client, args.pieces, args.outstanding, pending, submitted, stop)
        )
        sampler = asyncio.create_task(sample(client, samples, stop, args.sample))
        flight = replicate.flight
        before = flight.accepted + flight.refused
        deadline = time.monotonic() + 180
        while flight.accepted + flight.refused == before:  # the first create of the mode
            if time.monotonic() > deadline or feeder.done():
                stop.set()
                raise SystemExit(f"{mode}: no create reached the provider in 180 s")
            await asyncio.sleep(0.1)
        await asyncio.sleep(args.warmup)
        start = time.monotonic()
        first = (flight.accepted, flight.refused, replicate.counters.requests("succeeded"))
        timeline_from = len(flight.timeline)
        in_flight_at_start = flight.in_flight
        ran: list[Step] = []
        for seconds, capacity in steps:
            replicate.capacity = capacity
            if mode == "oracle":
                await set_limit(client, capacity)
                await asyncio.to_thread(tell_the_fleet, cluster, capacity)
            begun = time.monotonic()
            await asyncio.sleep(max(0.0, begun + seconds - time.monotonic()))
            ran.append(Step(capacity, begun, time.monotonic()))
        end = time.monotonic()
        last = (flight.accepted, flight.refused, replicate.counters.requests("succeeded"))
        timeline = flight.timeline[timeline_from:]
        # drain: no new batches, no capacity, the ceiling back (adaptive raises its own)
        stop.set()
        await asyncio.gather(feeder, sampler)
        replicate.capacity = None
        cluster.run(str(BIN / "studio"), "limits", "apply")  # the ceiling back, every mode
        drained = time.monotonic() + args.drain
        while pending and time.monotonic() < drained:
            pending.intersection_update(await unfinished(client, set(pending)))
            await asyncio.sleep(1)
        if pending:
            print(f"  warning: {len(pending)} batch(es) unfinished after the drain", flush=True)
    for name in names:
        stop_worker(cluster, name)
    settled = [settled_part(step) for step in ran]
    fleet_peak = max(
        (slots for t, _, slots in samples if any(a <= t <= b for a, b in settled)), default=0
    )
    provider_peak = max(
        (level_at(timeline, a, in_flight_at_start) for a, _ in settled), default=0
    )
    provider_peak = max(
        [provider_peak, *(n for t, n in timeline if any(a <= t <= b for a, b in settled))]
    )
    follow, limits, previous = [], [], args.ceiling
    for step in ran:
        follow.append(follow_time(step, previous, samples, timeline, args.hold))
        during = [lim for t, lim, _ in samples if step.start <= t <= step.end]
        limits.append(statistics.median(during) if during else float("nan"))
        previous = step.capacity
    per_step = [sum(1 for t in flight.refused_at if step.start <= t < step.end) for step in ran]
    if args.trace:
        wall = time.time() - time.monotonic()  # the fleet's history is in UTC wall time
        history = [(t - wall, to, why) for t, to, why in
                   await asyncio.to_thread(limit_history, cluster, ran[0].start + wall - 1)]
        print_trace(mode, ran, history, flight.refused_at)
    return Result(
        mode=mode, seconds=end - start, images=last[2] - first[2], refused_per_step=per_step,
        accepted=last[0] - first[0], refused=last[1] - first[1],
        fleet_peak=fleet_peak, provider_peak=provider_peak, follow=follow, limits=limits,
        batches=len(submitted),
        busy=busy_share(ran, timeline, in_flight_at_start),
    )


def print_trace(
    mode: str, ran: list[Step], history: list[tuple[float, int, str]], refused_at: list[float]
) -> None:
    """`--trace`: per step, when the provider refused (seconds into the step) and each
    change of the fleet's limit from its history (`provider_limit_change`; `!` marks a
    throttling decrease, `=` the bench's own `applied` for the oracle): where the
    throttling of a mode comes from."""
    marks = {"throttled": "!", "applied": "=", "manual": "m"}
    for step in ran:
        refusals = [t - step.start for t in refused_at if step.start <= t < step.end]
        changes = [f"{t - step.start:.1f}:{to}{marks.get(why, '')}"
                   for t, to, why in history if step.start <= t < step.end]
        print(f"  {mode} C={step.capacity}: refused at "
              + (" ".join(f"{t:.1f}" for t in refusals) or "-")
              + " | limit " + " ".join(changes), flush=True)


# -- the table ---------------------------------------------------------------------------------
def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """The median, with [min-max] when there are several runs."""
    finite = [v for v in values if v == v and v != float("inf")]
    if not finite:
        return "-"
    median = fmt.format(statistics.median(finite))
    if len(values) == 1:
        return median
    return f"{median} [{fmt.format(min(finite))}-{fmt.format(max(finite))}]"


def follow_cell(values: list[float | None]) -> str:
    """Median seconds to follow, 'never' when no run followed; n/N when only some did."""
    done = [v for v in values if v is not None]
    if not done:
        return "never"
    cell = spread(done)
    return cell if len(done) == len(values) else f"{cell} ({len(done)}/{len(values)})"


def report(results: dict[str, list[Result]], args: argparse.Namespace) -> None:
    steps = args.steps
    changes = " -> ".join(f"C={c} {s:g}s" for s, c in steps)
    print(f"\nReplicate capacity {args.ceiling} (warm-up {args.warmup:g}s) -> {changes}; "
          f"ceiling {args.ceiling}; 2 workers --limit {args.limit}; batches of {args.pieces} "
          f"pieces, {args.outstanding} outstanding; "
          f"Retry-After {args.retry_after:g}s; {args.runs} run(s): median [min-max]\n")
    heads = ["mode", "images/min", "provider busy %", "throttled %", "429s/image",
             "peak fleet/provider",
             *(f"follow C={c} (s)" for _, c in steps), "limit per step (median)"]
    rows = []
    for mode, runs in results.items():
        peaks = (f"{spread([r.fleet_peak for r in runs], '{:.0f}')}/"
                 f"{spread([r.provider_peak for r in runs], '{:.0f}')}")
        limits = "/".join(
            spread([r.limits[i] for r in runs], "{:.0f}") for i in range(len(steps))
        )
        rows.append([
            mode, spread([r.per_minute for r in runs]), spread([100 * r.busy for r in runs]),
            spread([r.throttled_pct for r in runs]),
            spread([r.per_image for r in runs], "{:.2f}"), peaks,
            *(follow_cell([r.follow[i] for r in runs]) for i in range(len(steps))), limits,
        ])
    widths = [max(len(str(row[i])) for row in [heads, *rows]) for i in range(len(heads))]
    for row in [heads, ["-" * w for w in widths], *rows]:
        print(" | ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)))
    if "adaptive" in results and "oracle" in results:
        ratios = [
            a.per_minute / o.per_minute
            for a, o in zip(results["adaptive"], results["oracle"], strict=False)
            if o.per_minute
        ]
        adaptive = results["adaptive"]
        throttled = statistics.median(r.throttled_pct for r in adaptive)
        follows = [r.follow[i] for r in adaptive for i in range(len(steps))]
        worst = None if any(f is None for f in follows) else max(follows)  # type: ignore[type-var]
        ratio = statistics.median(ratios) if ratios else float("nan")
        print("\ngoals (adaptive):")
        print(f"  throughput / oracle: {spread([100 * r for r in ratios])} % "
              f"(goal >= {GOAL_RATIO:.0%}): {'met' if ratio >= GOAL_RATIO else 'NOT met'}")
        print(f"  calls throttled: {throttled:.1f} % (goal <= {GOAL_THROTTLED:g} %): "
              f"{'met' if throttled <= GOAL_THROTTLED else 'NOT met'}")
        shown = "never (in some run)" if worst is None else f"{worst:.1f} s"
        met = worst is not None and worst <= GOAL_FOLLOW
        print(f"  slowest follow of a change of C: {shown} (goal <= {GOAL_FOLLOW:g} s): "
              f"{'met' if met else 'NOT met'}")


# -- main ------------------------------------------------------------------------------------
def parse_steps(text: str) -> list[tuple[float, int]]:
    steps = []
    for part in text.split(","):
        try:
            capacity, seconds = part.split(":")
            steps.append((float(seconds), int(capacity)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--steps: {part!r} is not C:seconds (e.g. 8:60,3:60,12:60)"
            ) from None
        if steps[-1][0] <= 0 or steps[-1][1] < 1:
            raise argparse.ArgumentTypeError(f"--steps: {part!r} needs C >= 1 and seconds > 0")
    return steps


async def bench(cluster: AdaptiveCluster, args: argparse.Namespace) -> None:
    results: dict[str, list[Result]] = {mode: [] for mode in args.modes}
    for run in range(args.runs):
        for mode in args.modes:
            result = await one_mode(cluster, mode, run, args)
            results[mode].append(result)
            follows = ", ".join("never" if f is None else f"{f:.1f}s" for f in result.follow)
            print(f"run {run + 1} {mode:8}: {result.per_minute:6.1f} images/min "
                  f"(provider {100 * result.busy:.0f} % busy), "
                  f"{result.throttled_pct:5.1f} % throttled ({result.refused} 429s: "
                  f"{'/'.join(str(n) for n in result.refused_per_step)} per step, "
                  f"{result.images} images), peak fleet {result.fleet_peak} provider "
                  f"{result.provider_peak}, follow {follows}, limits "
                  f"{'/'.join(f'{v:g}' for v in result.limits)}, {result.batches} batches",
                  flush=True)
    report(results, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--steps", type=parse_steps, default=parse_steps("8:60,3:60,12:60"),
                        help="the capacity C and how long it lasts, C:seconds,...")
    parser.add_argument("--step-seconds", type=float, default=None,
                        help="every step this long (shortens a development run)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--warmup", type=float, default=15.0,
                        help="seconds at C = the ceiling before the first step")
    parser.add_argument("--pieces", type=int, default=50, help="pieces per batch")
    parser.add_argument("--outstanding", type=int, default=8, help="batches kept unfinished")
    parser.add_argument("--limit", type=int, default=3, help="prefect worker start --limit")
    parser.add_argument("--ceiling", type=int, default=20, help="REPLICATE_MAX_CONCURRENT")
    parser.add_argument("--retry-after", type=float, default=1.0, help="the 429's Retry-After")
    parser.add_argument("--hold", type=float, default=5.0,
                        help="seconds the fleet's slots must stay <= C to have followed")
    parser.add_argument("--sample", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--trace", action="store_true",
                        help="print each step's refusals and the limit's changes")
    parser.add_argument("--drain", type=float, default=180.0, help="seconds to finish batches")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        parser.error(f"--modes: unknown {', '.join(bad) or '(none)'} (choose from {MODES})")
    if "adaptive" in modes and importlib.util.find_spec("engine.provider_pace") is None:
        print("adaptive: engine/provider_pace.py is not there yet: skipped", flush=True)
        modes.remove("adaptive")
    args.modes = modes
    if args.step_seconds is not None:
        args.steps = [(args.step_seconds, c) for _, c in args.steps]
    if args.runs < 1 or args.pieces < 1 or args.outstanding < 1 or args.ceiling < 1:
        parser.error("--runs, --pieces, --outstanding and --ceiling must be >= 1")

    from tests.infra.postgres import start_embedded_postgres
    from tests.infra.seaweedfs import S3Server

    AdaptiveCluster.ceiling = args.ceiling
    base = Path(tempfile.mkdtemp(prefix="bench-adaptive-"))
    print(f"cluster in {base}", flush=True)
    server_url, stop_pg = start_embedded_postgres(base / "pgdata")
    s3 = S3Server(base_dir=base / "s3")
    s3.start()
    try:
        with started_cluster(
            base / "cluster", server_url, s3, cluster_class=AdaptiveCluster, seed=301,
            replicate_latency=(1.0, 2.0),
        ) as cluster:
            asyncio.run(bench(cluster, args))
    finally:
        s3.shutdown()
        stop_pg()


if __name__ == "__main__":
    main()
