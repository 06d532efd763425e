"""Two resumes of one crashed batch at once (crash recovery and an operator, or two
operators): one works on it, the other waits for the batch's lease
(studio/db/batch_lease.py), then finds it finished and ends without touching it.

Real processes (tests/storage/crash_runner.py): the batch is killed -9 at its 4th
image; resume A holds its first render until the test says go; resume B starts
meanwhile, and must wait (its log line says so) instead of planning the same pieces.
On SQLite (an flock) and on PostgreSQL (an advisory lock held by a connection).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.polling import wait_for
from tests.storage.test_resume_kill import (
    PIECES,
    ROOT,
    _assert_one_row_per_piece,
    _child_env,
    _lines,
    _run,
)


def _resume(env: dict[str, str], probes: Path, batch_id: str, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "tests.storage.crash_runner", "--batch-id", batch_id,
               "--pieces", str(PIECES), "--probe-dir", str(probes), "--resume", *extra]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def home(prefect_api, any_database):
    from studio.bootstrap import ensure_demo_avatar

    ensure_demo_avatar()
    return any_database


def test_two_resumes_at_once_work_the_batch_once(home, tmp_path) -> None:
    probes = tmp_path / "probes"
    probes.mkdir()
    batch_id = str(uuid.uuid4())
    env = _child_env(home)
    assert _run(env, probes, batch_id, "--crash-at", "image:4") == -signal.SIGKILL

    go = tmp_path / "go"
    first = _resume(env, probes, batch_id, "--hold-at-render", str(go))
    second = None
    try:
        wait_for("resume A at its first render", lambda: (probes / "holding").exists(), 120)
        second = _resume(env, probes, batch_id)
        log_file = Path(home.log_file)
        waiting = f"Batch waiting | Batch: {batch_id}"
        wait_for("resume B waiting for the lease",
                 lambda: log_file.exists() and waiting in log_file.read_text(), 120)
        assert second.poll() is None  # B waits; it planned nothing
        go.touch()
        out_a, _ = first.communicate(timeout=300)
        out_b, _ = second.communicate(timeout=300)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
    assert first.returncode == 0, out_a[-3000:]
    assert second.returncode == 0, out_b[-3000:]
    assert "another run ended batch" in out_b and "(completed)" in out_b

    renders = Counter(_lines(probes / "renders.log"))
    assert len(renders) == PIECES and max(renders.values()) == 1  # no image made twice
    hooks = Counter(_lines(probes / "hooks.log"))
    assert len(hooks) == PIECES and max(hooks.values()) == 1  # no hook paid twice
    rows = _assert_one_row_per_piece(batch_id)
    assert {r.status for r in rows} <= {"published", "rejected", "pending_review"}
