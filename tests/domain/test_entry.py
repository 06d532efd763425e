"""The `studio` console script: which commands start the local Prefect API early, and
that a command ends with its own exit code after its exit handlers ran."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from cli.entry import runs_a_batch


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["batch", "run", "--avatar", "demo"], True),
        (["demo", "--pieces", "5"], True),
        (["--verbose", "demo"], True),
        (["batch", "submit", "--avatar", "demo"], False),
        (["avatar", "list"], False),
        (["local-server", "stop"], False),
        ([], False),
    ],
)
def test_only_commands_that_run_a_batch_start_the_server_early(argv, expected) -> None:
    assert runs_a_batch(argv) is expected


def test_exit_code_and_exit_handlers_survive_the_fast_exit(tmp_path) -> None:
    script = textwrap.dedent(
        f"""
        import atexit, sys
        atexit.register(lambda: open({str(tmp_path / "ran")!r}, "w").write("yes"))
        from cli.entry import _exit_without_teardown
        print("flushed", end="")
        _exit_without_teardown(3)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 3
    assert done.stdout == "flushed"
    assert (tmp_path / "ran").read_text() == "yes"
