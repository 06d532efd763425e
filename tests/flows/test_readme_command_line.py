"""The README's "Command line" ```bash block, run as written by an operator would.

WHY: the commands a user copies from the README must work; the "On Prefect" block has
its own test (tests/prefect_server/test_readme_on_prefect.py), this one covers the
local commands. Each line is read from README.md and run by bash in a fresh folder
(with `.venv` linked into it, so `.venv/bin/studio` is the project's), on the embedded
defaults plus the ComfyUI emulator, with no PREFECT_API_URL (the local Prefect API).
Substituted, and only that: an optional `[...]` part runs once without and once with
it, `<batch-id>` is the walk-through's first batch (for `batch resume`, a batch the
test killed mid image step, as the line says), `CURSOR` the cursor the previous page
printed, and seed-history's `--pieces` is smaller.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.emulators.base import Behaviour
from tests.emulators.comfyui import ComfyUIEmulator
from tests.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def command_line_blocks(readme: Path = ROOT / "README.md") -> list[list[str]]:
    """The command lines of each ```bash block of the README's "Command line" section
    (its subsections included): the first is the walk-through, the others its parts."""
    section = readme.read_text().split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    blocks = [part.split("```", 1)[0] for part in section.split("```bash\n")[1:]]
    found = []
    for block in blocks:
        lines = [re.split(r"\s+#\s", raw, maxsplit=1)[0].strip() for raw in block.splitlines()]
        found.append([line for line in lines if line and not line.startswith("#")])
    return found


def command_line_block(readme: Path = ROOT / "README.md") -> list[str]:
    """The command lines of the README's "Command line" ```bash block."""
    return command_line_blocks(readme)[0]


def variants(line: str) -> Iterator[str]:
    """The line without its optional `[...]` parts, then with all of them."""
    optional = re.compile(r"\s*\[([^\]]+)\]")
    yield optional.sub("", line)
    if optional.search(line):
        yield optional.sub(lambda m: " " + m.group(1), line)


class Walkthrough:
    """A fresh folder and environment in which the block's lines run one by one."""

    def __init__(self, folder: Path, comfyui_url: str) -> None:
        self.folder = folder
        (folder / ".venv").symlink_to(Path(sys.executable).parent.parent)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PREFECT_", "STUDIO_", "DATABASE_", "R2_", "COMFYUI_",
                                    "MODAL_", "REPLICATE_", "ANTHROPIC_", "OPENAI_",
                                    "ALLOW_STAND_INS", "LOG_FILE"))}
        env.update(
            STUDIO_HOME=str(folder / "home"), PREFECT_HOME=str(folder / "prefect"),
            COMFYUI_ENABLED="true", COMFYUI_ENDPOINT=comfyui_url,
            COMFYUI_POLL_INTERVAL="0.02",
        )
        self.env = env
        self.first_batch: str | None = None
        self.killed_batch: str | None = None
        self.cursor: str | None = None

    def run(self, line: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["bash", "-c", line], cwd=self.folder, env=self.env, capture_output=True,
            text=True, timeout=300, check=False,
        )
        output = f"{done.stdout}\n{done.stderr}"
        assert done.returncode == 0, f"{line!r} exit {done.returncode}:\n{output}"
        return done

    def substitute(self, line: str) -> str:
        if "batch resume" in line:
            assert self.killed_batch, "no killed batch to resume"
            line = line.replace("<batch-id>", self.killed_batch)
        if "<batch-id>" in line:
            assert self.first_batch, "no batch run yet"
            line = line.replace("<batch-id>", self.first_batch)
        if "CURSOR" in line:
            assert self.cursor, "no page printed a cursor yet"
            line = line.replace("CURSOR", f"'{self.cursor}'")
        if "seed-history" in line:
            line = line.replace("--pieces 1000000", "--pieces 2000 --avatars 5")
        return line

    def remember(self, line: str, done: subprocess.CompletedProcess[str]) -> None:
        if "batch run" in line and self.first_batch is None:
            self.first_batch = re.search(rf"batch ({UUID}):", done.stdout).group(1)  # type: ignore[union-attr]
        found = re.search(r"--after '([^']+)'", done.stdout)
        if found:
            self.cursor = found.group(1)

    def kill_a_batch_mid_image_step(self, comfyui: ComfyUIEmulator) -> str:
        """`studio batch run` killed -9 while its images hang: the batch `batch resume`
        is for."""
        comfyui.behaviour.hang = True
        sent_before = comfyui.counters.requests("prompt")  # the walk-through's earlier batches
        studio = self.folder / ".venv" / "bin" / "studio"
        process = subprocess.Popen(
            [str(studio), "batch", "run", "--avatar", "nova", "--pieces", "3"],
            cwd=self.folder, env=self.env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            markers = self.folder / "home" / "running"
            marker = wait_for("the owner marker", lambda: next(iter(markers.glob("*.json")), None))
            wait_for(
                "an image of this batch in flight",
                lambda: comfyui.counters.requests("prompt") > sent_before,
            )
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
            comfyui.behaviour.hang = False
        return marker.stem


@pytest.fixture
def comfyui() -> Iterator[ComfyUIEmulator]:
    with ComfyUIEmulator(Behaviour(seed=21, latency=(0.0, 0.01))) as emulator:
        yield emulator


def test_the_readme_command_line_block_runs_as_written(tmp_path: Path, comfyui) -> None:
    lines = command_line_block()
    assert any("batch resume <batch-id>" in line for line in lines), lines
    walk = Walkthrough(tmp_path, comfyui.url)
    try:
        for line in lines:
            if "batch resume" in line:
                walk.killed_batch = walk.kill_a_batch_mid_image_step(comfyui)
            for variant in variants(line):
                command = walk.substitute(variant)
                walk.remember(command, walk.run(command))
        assert walk.killed_batch is not None
        status = walk.run(f".venv/bin/studio batch status {walk.killed_batch}")
        assert f"batch: {walk.killed_batch} (completed)" in status.stdout, status.stdout
        assert (tmp_path / "bench.db").exists()  # seed-history filled its own database
    finally:
        subprocess.run(
            [str(tmp_path / ".venv" / "bin" / "studio"), "local-server", "stop"],
            cwd=tmp_path, env=walk.env, capture_output=True, timeout=60, check=False,
        )


def test_the_command_line_sections_other_blocks_run_as_written(tmp_path: Path, comfyui) -> None:
    """Avatar import, workflow check, templates import/list: the blocks of the section's
    subsections, in a fresh folder that has the repository's docs/ (the files they name)."""
    blocks = command_line_blocks()[1:]
    lines = [line for block in blocks for line in block]
    assert any("avatar import" in line for line in lines), lines
    assert any("workflow check" in line for line in lines), lines
    walk = Walkthrough(tmp_path, comfyui.url)
    (tmp_path / "docs").symlink_to(ROOT / "docs")
    walk.run(".venv/bin/studio init")
    for line in lines:
        for variant in variants(line):
            walk.run(variant)
    shown = walk.run(".venv/bin/studio avatar show mara-moves --json")
    assert "mrmv woman" in shown.stdout
