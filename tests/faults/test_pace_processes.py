"""The fleet's pace across real processes: one Prefect server, one PostgreSQL.

- Five processes report throttling answers and accepted jobs at once, through storms and
  calm, while an operator caps the limit by hand in the middle: Prefect's limit and every
  recorded change stay within [1, ceiling], never above the operator's cap once it is
  seen, and the changes form one chain (each starts where the one before ended: no two
  processes moved the limit from the same value).
- A 429 with Retry-After seen by process A holds process B's next call until it passed.
- A process killed between committing its change and telling Prefect (or between telling
  Prefect and committing) loses at most that change, never read as a manual cap.

The processes are this module run as a script (`python -m tests.faults.test_pace_processes`).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIMIT = "provider:replicate"
CEILING = 6
MANUAL_CAP = 3
WORKERS = 5
#: seconds after the common start: (until, chance a call is throttled)
PHASES = ((3.0, 0.3), (9.0, 0.0), (12.0, 0.3), (18.0, 0.0))
CAP_AT = 8.0  # the operator's cap, during the first calm (the limit at or near the ceiling)
KNOBS = {"cooldown_seconds": 0.05, "raise_after_seconds": 0.1, "probe_after_seconds": 0.2}


# --- the worker processes ---------------------------------------------------------------


def _keeper():  # type: ignore[no-untyped-def]
    from engine.provider_pace import PaceKeeper
    from studio.providers.pace_settings import PaceSettings

    class Timed(PaceKeeper):
        """Keeps how long each adjustment took (what a loaded host costs the fleet)."""

        seconds: list[float] = []

        def _adjust(self, job):  # type: ignore[no-untyped-def]
            started = time.monotonic()
            try:
                super()._adjust(job)
            finally:
                self.seconds.append(time.monotonic() - started)

    return Timed(PaceSettings(_env_file=None, **KNOBS), {"replicate": CEILING})


async def _churn(seed: int) -> dict[str, int]:
    """Calls on four lanes until the last phase ends, each throttled by the phase's odds;
    the common start (epoch seconds) is read from stdin once every process is ready."""
    pace = _keeper()
    rng = random.Random(seed)
    counts = {"calls": 0, "throttled": 0}
    print("READY", flush=True)
    start = float(sys.stdin.readline())
    await asyncio.sleep(max(0.0, start - time.time()))

    async def lane() -> None:
        while (elapsed := time.time() - start) < PHASES[-1][0]:
            odds = next(p for until, p in PHASES if elapsed < until)
            await pace.before_call("replicate")
            counts["calls"] += 1
            if rng.random() < odds:
                counts["throttled"] += 1
                pace.throttled("replicate", 429, rng.choice([None, 0.05, 0.1]))
            else:
                pace.succeeded("replicate")
            await asyncio.sleep(rng.uniform(0.02, 0.06))

    await asyncio.gather(*(lane() for _ in range(4)))
    flushing = time.monotonic()
    assert pace.flush(60)
    counts["flush_seconds"] = round(time.monotonic() - flushing, 2)
    counts["adjustments"] = len(pace.outcomes)
    counts["slowest"] = round(max(pace.seconds, default=0.0), 2)
    counts["median"] = round(sorted(pace.seconds)[len(pace.seconds) // 2], 3) if pace.seconds else 0
    return counts


def _crash(when: str) -> None:
    """One throttling adjustment, killed -9 style (`os._exit`) around telling Prefect."""
    from engine.provider_pace import PrefectLimit
    from studio.db import provider_pace as db
    from studio.db.engine import session_scope
    from studio.providers.aimd import Knobs, Throttled

    pace = _keeper()

    class Dies(PrefectLimit):
        def write(self, limit: int) -> None:
            if when == "after":
                super().write(limit)
            os._exit(9)

    db.adjust("replicate", CEILING, Throttled(429, None), Knobs(), Dies(pace, "replicate"),
              sessions=session_scope)
    raise AssertionError("the adjustment should have died")


async def _retry_after(seconds: float) -> dict[str, float]:
    """Process A: one 429 with Retry-After, told to the fleet."""
    pace = _keeper()
    pace.throttled("replicate", 429, seconds)
    assert pace.flush(30)
    return {"seen_at": time.time()}


async def _wait_turn() -> dict[str, float]:
    """Process B: how long its next call waited, and when it was let go."""
    pace = _keeper()
    started = time.time()
    await pace.before_call("replicate")
    return {"started": started, "let_go": time.time()}


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "churn":
        result = asyncio.run(_churn(int(argv[1])))
    elif mode == "crash":
        _crash(argv[1])
        return
    elif mode == "retry-after":
        result = asyncio.run(_retry_after(float(argv[1])))
    elif mode == "wait":
        result = asyncio.run(_wait_turn())
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("RESULT " + json.dumps(result), flush=True)


# --- the tests ---------------------------------------------------------------------------


@pytest.fixture
def fleet(prefect_api, postgres_url, tmp_path, monkeypatch) -> Iterator[dict[str, str]]:
    """A fresh studio database on the session's PostgreSQL, `provider:replicate` at the
    ceiling on the session's Prefect server, and the environment for the processes."""
    from prefect.settings import PREFECT_API_URL

    from studio.db.engine import dispose_engines
    from tests.conftest import use_database
    from tests.infra.postgres import create_database

    settings = use_database(monkeypatch, tmp_path / "studio", create_database(postgres_url))
    _set_limit(CEILING)
    from studio.db import provider_pace as db
    from studio.db.engine import session_scope

    with session_scope() as session:  # what `studio limits apply` records
        db.applied(session, "replicate", CEILING, CEILING)
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PYTHONPATH": str(ROOT),
        "STUDIO_HOME": str(tmp_path / "studio"),
        "DATABASE_URL": settings.resolved_database_url,
    }
    yield env
    _set_limit(5)  # the configured default, for the rest of the session
    dispose_engines()


def _client():  # type: ignore[no-untyped-def]
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _set_limit(limit: int) -> None:
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    with _client() as client:
        try:
            client.read_global_concurrency_limit_by_name(LIMIT)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=LIMIT, limit=limit, active=True)
            )
            return
        client.update_global_concurrency_limit(
            LIMIT, GlobalConcurrencyLimitUpdate(limit=limit, active=True)
        )


def _spawn(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """A worker process; its stderr (every log line) goes to a file, not a pipe that
    would fill and block it."""
    errors = Path(env["STUDIO_HOME"]).parent / f"worker-{'-'.join(args)}.err"
    with errors.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.test_pace_processes", *args],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=err, text=True,
        )
    process.errors = errors  # type: ignore[attr-defined]
    return process


def _errors(process: subprocess.Popen[str]) -> str:
    return process.errors.read_text()[-3000:]  # type: ignore[attr-defined]


def _result(process: subprocess.Popen[str], timeout: float = 180) -> dict:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, _errors(process)
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def _changes():  # type: ignore[no-untyped-def]
    from studio.db import provider_pace as db
    from studio.db.engine import session_scope

    with session_scope() as session:
        return db.limit_changes(session, datetime.now(UTC) - timedelta(hours=1),
                                providers=["replicate"])


def _row():  # type: ignore[no-untyped-def]
    from studio.db import provider_pace as db
    from studio.db.engine import session_scope

    with session_scope() as session:
        return db.pace_row(session, "replicate")


def test_five_processes_keep_the_limit_in_bounds_and_under_a_manual_cap(fleet) -> None:
    workers = [_spawn(fleet, "churn", str(n)) for n in range(WORKERS)]
    for worker in workers:  # every process imported, its keeper made
        assert worker.stdout is not None and worker.stdin is not None
        assert worker.stdout.readline().strip() == "READY", _errors(worker)
    start = time.time() + 0.5
    for worker in workers:
        worker.stdin.write(f"{start}\n")
        worker.stdin.flush()
    samples: list[tuple[float, int]] = []
    cap_set = False
    cap_tries, last_try = 0, 0.0
    with _client() as client:
        while any(w.poll() is None for w in workers):
            now = time.time()
            samples.append((now, client.read_global_concurrency_limit_by_name(LIMIT).limit))
            if now - start >= CAP_AT and not cap_set:
                row = _row()
                if row is not None and row.manual_cap == MANUAL_CAP:
                    cap_set = True
                elif cap_tries == 0 or (samples[-1][1] != MANUAL_CAP and now - last_try > 0.5):
                    # the operator, on Prefect's Concurrency page; set again if a change
                    # in flight at that very moment overwrote it before it was seen (no
                    # compare-and-set on Prefect's API)
                    client.update_global_concurrency_limit(
                        LIMIT, _update(MANUAL_CAP)
                    )
                    cap_tries, last_try = cap_tries + 1, now
            time.sleep(0.03)
    results = [_result(w) for w in workers]
    assert cap_set and cap_tries <= 3, (cap_tries, results, [
        (c.at.timestamp() - start, c.from_limit, c.to_limit, c.reason) for c in _changes()])
    assert sum(r["throttled"] for r in results) > 20, results
    assert sum(r["calls"] for r in results) > 500, results

    changes = _changes()
    reasons = [c.reason for c in changes]
    assert reasons.count("throttled") >= 2 and reasons.count("recovered") >= 2, (
        reasons, results)
    # one chain: each change starts where the one before ended (first sight at the ceiling)
    previous = CEILING
    for change in changes:
        assert change.from_limit == previous, changes
        assert 1 <= change.to_limit <= CEILING, changes
        previous = change.to_limit
    manual = [c for c in changes if c.reason == "manual"]
    story = (results, [(round(c.at.timestamp() - start, 2), c.from_limit, c.to_limit, c.reason)
                       for c in changes])
    assert manual and manual[-1].to_limit == MANUAL_CAP, story
    cap_seen = manual[-1].at
    after = [c for c in changes if c.at > cap_seen]
    assert after and all(c.to_limit <= MANUAL_CAP for c in after), story
    assert any(c.reason == "throttled" for c in after), story  # the second storm lowered it
    assert any(c.reason == "recovered" for c in after), story  # ... and the calm raised it
    # what the operator saw on Prefect: always in bounds, under the cap once it was seen
    assert all(1 <= limit <= CEILING for _, limit in samples), samples
    assert min(limit for _, limit in samples) < MANUAL_CAP, story  # the storms lowered it
    late = [limit for at, limit in samples if at > cap_seen.timestamp() + 0.5]
    assert late and max(late) <= MANUAL_CAP, (late, story)
    row = _row()
    assert row.pending_to is None and row.manual_cap == MANUAL_CAP
    with _client() as client:
        assert client.read_global_concurrency_limit_by_name(LIMIT).limit == row.current


def _update(limit: int):  # type: ignore[no-untyped-def]
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    return GlobalConcurrencyLimitUpdate(limit=limit)


def test_a_retry_after_seen_by_one_process_holds_the_next_call_of_another(fleet) -> None:
    seen = _result(_spawn(fleet, "retry-after", "10"))
    row = _row()
    until = row.throttled_until.replace(tzinfo=row.throttled_until.tzinfo or UTC).timestamp()
    assert until == pytest.approx(seen["seen_at"] + 10, abs=2.0)
    waited = _result(_spawn(fleet, "wait"))
    assert waited["started"] < until - 1.0  # it asked while the Retry-After was in force
    assert waited["let_go"] >= until - 0.05  # ... and was held until it passed
    assert waited["let_go"] - until < 2.0


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_process_killed_mid_change_loses_at_most_that_change(fleet, when, monkeypatch) -> None:
    from engine.provider_pace import PaceKeeper
    from studio.db import provider_pace as db
    from studio.providers.pace_settings import PaceSettings

    crashed = _spawn(fleet, "crash", when)
    crashed.communicate(timeout=120)
    assert crashed.returncode == 9
    row = _row()
    assert (row.current, row.pending_to) == (CEILING, 4)  # committed, never finished
    with _client() as client:
        told = client.read_global_concurrency_limit_by_name(LIMIT).limit
    assert told == (4 if when == "after" else CEILING)

    monkeypatch.setattr(db, "PENDING_STALE_SECONDS", 0.2)  # instead of waiting 45 s
    time.sleep(0.3)
    pace = PaceKeeper(PaceSettings(_env_file=None, raise_after_seconds=60.0),
                      {"replicate": CEILING})
    pace.succeeded("replicate")
    assert pace.flush(30)
    row = _row()
    assert row.pending_to is None and row.manual_cap is None
    if when == "after":  # it reached Prefect: completed and recorded, not a manual cap
        assert row.current == 4
        assert [(c.from_limit, c.to_limit, c.reason) for c in _changes()] == [
            (CEILING, CEILING, "applied"), (CEILING, 4, "throttled")
        ]
    else:  # it never did: that adjustment is lost, nothing else
        assert row.current == CEILING
        assert [c.reason for c in _changes()] == ["applied"]


if __name__ == "__main__":
    main(sys.argv[1:])
