"""A deployment run's suspension observer stops in the background, not on the run's clock.

WORKAROUND (none filed found). Since PrefectHQ/prefect#21875 (3.9) every deployment run
starts a thread with an event loop, an API client and an events subscription of its own
that watches for an external `Suspended` (prefect/_flow_run_suspension.py,
`observe_flow_run_suspension`). When the run ends, the engine sets a stop event that
thread polls every 0.2 s and joins it, closing its subscription and client, after the
run's final state is set and before the engine returns: 0.03-0.19 s per run in which
the process holds its worker slot with nothing left to do (issue 20, sampled in the
fleet bench's flow-run processes; the wave after it waits for that slot).

`install()` (in the flow-run process, engine/flow_run_process.py) wraps the engine's
observer: it starts and watches exactly as Prefect's does, and the run waits for it to be
ready as before; at the end its stop and join are handed to a daemon thread, so the
engine returns at once. Nothing depends on the observer once the run's state is final;
the process's exit ends that thread if it has not finished by then.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

_INSTALLED = "_studio_background_stop"


def install() -> None:
    """Wrap the flow engine's suspension observer (idempotent)."""
    import prefect.flow_engine as flow_engine

    observe = flow_engine.observe_flow_run_suspension
    if getattr(observe, _INSTALLED, False):
        return
    wrapped = _stopping_in_background(observe)
    setattr(wrapped, _INSTALLED, True)
    flow_engine.observe_flow_run_suspension = wrapped  # type: ignore[assignment]


def _stopping_in_background(
    observe: Callable[..., AbstractContextManager[None]],
) -> Callable[..., AbstractContextManager[None]]:
    @contextlib.contextmanager
    def observe_then_stop_in_background(*args: Any, **kwargs: Any) -> Iterator[None]:
        observing = observe(*args, **kwargs)
        observing.__enter__()  # started and ready, as the engine expects
        try:
            yield
        finally:
            threading.Thread(
                target=_stop, args=(observing,), name="suspension-observer-stop", daemon=True
            ).start()

    return observe_then_stop_in_background


def _stop(observing: AbstractContextManager[None]) -> None:
    with contextlib.suppress(Exception):  # Prefect's own exit logs what it needs to
        observing.__exit__(None, None, None)
