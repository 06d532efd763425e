"""`batch resume` and `batch status` use the local Prefect API `batch run` started (issue
16): no temporary server per command (8 s, ending with "Error logging to API"), no query
of 127.0.0.1:4200. Run as a user runs them: the console script in subprocesses with no
PREFECT_API_URL and homes of their own.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from tests.flows.test_local_server import flow_run_names, state, studio, user_env


def test_resume_and_status_reuse_the_local_api(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    try:
        made = studio(env, "demo", "--pieces", "2")
        assert made.returncode == 0, made.stdout + made.stderr
        batch_id = re.search(r"batch ([0-9a-f-]{36})", made.stdout)[1]
        server = state(tmp_path)
        assert server is not None
        with sqlite3.connect(tmp_path / "studio" / "studio.db") as db:  # as after a kill -9
            db.execute("UPDATE batch SET status = 'crashed' WHERE id = ?", (batch_id,))

        resumed = studio(env, "batch", "resume", batch_id)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert f"batch {batch_id} resumed: 2/2 published" in resumed.stdout
        assert "Error logging to API" not in resumed.stdout + resumed.stderr
        assert "Starting temporary server" not in resumed.stdout + resumed.stderr
        assert state(tmp_path) == server  # the same server, not a new one
        runs = flow_run_names(server["url"], server["auth"])
        assert runs.count("content-batch-demo-2") == 2  # the batch's run and its resume

        status = studio(env, "batch", "status", batch_id)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "state: Completed" in status.stdout and "earlier run:" in status.stdout
        assert f"batch: {batch_id} (completed)" in status.stdout
        assert "4200" not in status.stdout + status.stderr and "link:" not in status.stdout
        assert state(tmp_path) == server
    finally:
        studio(env, "local-server", "stop")
