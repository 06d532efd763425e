"""How a batch's hooks reach Claude: direct Messages calls, or one Message Batch.

The Message Batches API bills every token at half price but promises results within
24 hours, not seconds, so it suits batches nobody waits on. A batch's `hook_mode`:
- "direct" (the default, for on-demand runs): Messages calls, one per group of pieces;
- "message-batches": one Message Batch holding one request per group, polled within the
  batch's remaining time budget, with direct calls for the groups it does not finish;
- "auto": "message-batches" when the run was started by a schedule (the scheduled
  fan-out), "direct" otherwise.
The time budget is what BATCH_GENERATION_TIMEOUT leaves after the steps already run,
minus a margin for the steps still to come, capped by HOOK_MESSAGE_BATCH_BUDGET_SECONDS.
"""

from __future__ import annotations

DIRECT = "direct"
MESSAGE_BATCHES = "message-batches"
AUTO = "auto"
HOOK_MODES = (DIRECT, MESSAGE_BATCHES, AUTO)


def uses_message_batches(mode: str, *, scheduled: bool) -> bool:
    """Whether a batch in `mode` sends its hooks as one Message Batch."""
    if mode not in HOOK_MODES:
        raise ValueError(f"unknown hook mode {mode!r}")
    return mode == MESSAGE_BATCHES or (mode == AUTO and scheduled)


def message_batch_budget(
    *, batch_timeout: float, elapsed: float, margin: float, cap: float
) -> float:
    """Seconds the hook step may spend on a Message Batch (0 means: go direct)."""
    return max(0.0, min(cap, batch_timeout - elapsed - margin))
