"""The README's "On Prefect" ```bash block, read from README.md and run line by line.

WHY: the block once failed as written on a fresh clone (an option Prefect 3.9 refuses,
no shared database) while the tests set things up their own way. Tests run *these*
lines instead, substituting only what a test must: the real DATABASE_URL, the port, the
ComfyUI emulator's URL, and (optionally) where `~/.prefect` is. The long-lived lines
(`studio server`, `prefect worker start`) go to callbacks that start them in the
background; every `export` line is run by bash and its variables kept for the lines
after it (as if every shell had them).
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: the values the block shows that a test replaces
README_PORT = "4200"
README_COMFYUI = "http://127.0.0.1:8188"


def on_prefect_lines(readme: Path = README) -> list[str]:
    """The command lines of the first ```bash block of the README's "On Prefect"."""
    text = readme.read_text()
    section = text.split("\n## On Prefect\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    lines = []
    for raw in block.splitlines():
        line = re.split(r"\s+#\s", raw, maxsplit=1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


@dataclass
class Walkthrough:
    """What one run of the block substitutes and how it starts the long-lived lines."""

    env: dict[str, str]  # the shells' environment: grows with each `export` line
    database_url: str
    port: int
    comfyui_url: str
    start_server: Callable[[str, dict[str, str]], None]
    start_worker: Callable[[str, dict[str, str]], None]
    #: a submitted run id -> wait until it is final (asserting how it ended)
    wait_submitted: Callable[[str], None]
    prefect_home: Path | None = None  # replaces `~/.prefect` when set
    outputs: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)
    run_id: str | None = None

    def substitute(self, line: str) -> str:
        line = line.replace(README_PORT, str(self.port))
        line = line.replace(README_COMFYUI, self.comfyui_url)
        if self.prefect_home is not None:
            line = line.replace("~/.prefect", str(self.prefect_home))
        if line.startswith("export DATABASE_URL="):
            line = f"export DATABASE_URL={shlex.quote(self.database_url)}"
        if "<run-id>" in line:
            assert self.run_id, "batch submit printed no run id"
            line = line.replace("<run-id>", self.run_id)
        return line

    def export(self, line: str) -> None:
        """Run an `export ...` line in bash and keep what it set."""
        shown = subprocess.run(["bash", "-c", f"{line}\nenv -0"], env=self.env, cwd=ROOT,
                               capture_output=True, text=True, check=True)
        exported = dict(item.split("=", 1) for item in shown.stdout.split("\0") if "=" in item)
        for name in re.findall(r"\b([A-Z_][A-Z0-9_]*)=", line):
            self.env[name] = exported[name]

    def run(self, lines: list[str] | None = None) -> str:
        """Every line in order; returns the submitted run's id."""
        for original in lines or on_prefect_lines():
            line = self.substitute(original)
            if line.startswith("export "):
                self.export(line)
            elif " server" in line and line.split()[0].endswith("studio"):
                self.start_server(line + f" --port {self.port}", dict(self.env))
            elif "worker start" in line:
                self.start_worker(line, dict(self.env))
            else:
                done = subprocess.run(["bash", "-c", line], cwd=ROOT, env=self.env,
                                      capture_output=True, text=True, timeout=300,
                                      stdin=subprocess.DEVNULL)
                assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
                self.outputs[original] = done
                if "batch submit" in line:
                    found = re.search(r"run ([0-9a-f-]{36})", done.stdout)
                    assert found, done.stdout
                    self.run_id = found[1]
                    self.wait_submitted(self.run_id)
        assert self.run_id is not None, "the block submitted no batch"
        return self.run_id
