"""The spec's log lines, in its exact formats, to the console and to `logs/app.log`.

The spec's grep/awk/Python recipes ("Real-time Metrics", "Parsing for Analysis",
Common Issues) read these lines, so the wording here is an interface: change it and
the studio's dashboards break.
"""

from __future__ import annotations

import logging
from pathlib import Path

LOGGER_NAME = "studio"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

log = logging.getLogger("studio.batch")

STEP_NAMES = {
    1: "Template Selection",
    2: "Image Generation",
    3: "Hook Generation",
    4: "Safety Check",
    5: "Storage Upload",
    6: "Database Save",
    7: "Statistics Calculation",
}


def configure_logging(log_file: Path, level: str = "INFO") -> None:
    """Attach one file handler for `log_file` to the `studio` logger (idempotent).

    The console side is Prefect's: `studio` is registered as an extra Prefect logger,
    so the same lines also reach the run's logs in the Prefect UI.
    """
    root = logging.getLogger(LOGGER_NAME)
    root.setLevel(level.upper())
    target = str(Path(log_file).resolve())
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler) and handler.baseFilename == target:
            return
    for handler in [h for h in root.handlers if getattr(h, "_studio_file", False)]:
        root.removeHandler(handler)
        handler.close()
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(target, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
    file_handler._studio_file = True  # type: ignore[attr-defined]
    root.addHandler(file_handler)


def batch_start(avatar_id: str, pieces: int, platform: str) -> str:
    return f"[BATCH START] Avatar: {avatar_id}, Pieces: {pieces}, Platform: {platform}"


def step_line(number: int, details: str, seconds: float, extra: str = "") -> str:
    parts = [f"[STEP {number}/7] {STEP_NAMES[number]}"]
    if details:
        parts.append(details)
    parts.append(f"Duration: {seconds:.2f}s")
    if extra:
        parts.append(extra)
    return " | ".join(parts)


def batch_complete(avatar_id: str, seconds: float, pieces: int, cost_usd: float) -> str:
    return (
        f"[BATCH COMPLETE] Avatar: {avatar_id} | Total Duration: {seconds:.2f}s"
        f" | Pieces: {pieces} | Cost: ${cost_usd:.2f}"
    )


def batch_failed(avatar_id: str, seconds: float, pieces: int, cost_usd: float, reason: str) -> str:
    """A batch below min_success_ratio: the [BATCH COMPLETE] fields, then why, so the
    spec's `[BATCH COMPLETE]` recipes count only batches that delivered."""
    return (
        f"[BATCH FAILED] Avatar: {avatar_id} | Total Duration: {seconds:.2f}s"
        f" | Pieces: {pieces} | Cost: ${cost_usd:.2f} | Reason: {reason}"
    )
