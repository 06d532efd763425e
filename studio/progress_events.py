"""In-process progress events, so the CLI can draw a progress bar while a flow runs.

Steps say how much work they start and each unit they finish; whoever listens (the
CLI's rich progress bar) draws it. With no listener this costs a dictionary update.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

Listener = Callable[[str, int, int], None]
_listeners: list[Listener] = []
_totals: dict[str, int] = {}
_done: dict[str, int] = {}
_lock = threading.Lock()


def subscribe(listener: Listener) -> None:
    _listeners.append(listener)


def unsubscribe(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def start(step: str, total: int) -> None:
    with _lock:
        _totals[step] = total
        _done[step] = 0
    _emit(step)


def advance(step: str, units: int = 1) -> None:
    with _lock:
        _done[step] = _done.get(step, 0) + units
    _emit(step)


def _emit(step: str) -> None:
    done, total = _done.get(step, 0), _totals.get(step, 0)
    for listener in list(_listeners):
        listener(step, done, total)
