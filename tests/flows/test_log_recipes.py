"""The spec's own grep/awk/Python recipes ("Monitoring & Observability", Common Issues)
must work unchanged on the log a batch writes."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.content_batch import content_batch

pytestmark = pytest.mark.skipif(shutil.which("grep") is None, reason="needs GNU grep")


def sh(command: str, cwd: Path) -> str:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, check=False
    ).stdout


@pytest.fixture(scope="module")
def log_dir(prefect_api, tmp_path_factory) -> Iterator[Path]:
    """Two batches (one with a prompt the policy must reject) write one log, read by all."""
    from studio.bootstrap import ensure_demo_avatar
    from studio.db.engine import dispose_engines
    from tests.conftest import use_database

    home = tmp_path_factory.mktemp("recipes") / "studio"
    with pytest.MonkeyPatch.context() as monkeypatch:
        settings = use_database(monkeypatch, home, None)
        ensure_demo_avatar()
        asyncio.run(content_batch(avatar_id="demo", num_pieces=6))
        asyncio.run(
            content_batch(
                avatar_id="demo",
                num_pieces=2,
                custom_prompts=["portrait of a schoolgirl", "city walk at dusk"],
                custom_tiers=["capa1", "capa1"],
            )
        )
        yield Path(settings.log_file).parent.parent
        dispose_engines()


def test_image_generation_average(log_dir: Path) -> None:
    out = sh(
        r"""grep "STEP 2/7.*Image Generation" logs/app.log | \
  grep -oP "Duration: \K[0-9.]+" | \
  awk '{sum+=$1; count++} END {print "Avg:", sum/count "s"}'""",
        log_dir,
    )
    assert re.fullmatch(r"Avg: [0-9.]+s\n", out), out


def test_hook_success_rate(log_dir: Path) -> None:
    out = sh(
        r"""grep "Hook generation summary" logs/app.log | \
  grep -oP "Success: \K[0-9]+(?=/)" | \
  awk '{sum+=$1} //{sum2++} END {print "Success rate:", sum/(sum+sum2)*100 "%"}'""",
        log_dir,
    )
    assert out.startswith("Success rate: "), out


def test_safety_rejections_and_reasons(log_dir: Path) -> None:
    rejected = sh(
        r"""grep "Safety check summary" logs/app.log | grep -oP "Rejected: \K[0-9]+(?=/)" """,
        log_dir,
    ).split()
    assert rejected == ["0", "1"]
    reasons = sh(
        r"""grep "Content rejected" logs/app.log | \
  grep -oP "Reason: \K[^|]+" | sort | uniq -c | sort -rn""",
        log_dir,
    )
    assert "sexual/minors" in reasons


def test_step_grep(log_dir: Path) -> None:
    assert sh(r"""grep -c "\[STEP" logs/app.log""", log_dir).strip() == "14"


def test_python_batch_complete_parser(log_dir: Path) -> None:
    log_lines = open(log_dir / "logs" / "app.log").readlines()  # noqa: SIM115 (spec recipe)
    found = []
    for line in log_lines:
        if "[BATCH COMPLETE]" in line:
            match = re.search(r"Duration: ([0-9.]+)s.*Pieces: (\d+).*Cost: \$([0-9.]+)", line)
            duration, pieces, cost = match.groups()
            found.append((float(duration), int(pieces), float(cost)))
    assert [p for _, p, _ in found] == [6, 1]
