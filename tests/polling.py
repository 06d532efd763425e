"""Waiting in tests for something another process does.

A deadline against a hung test, never a timing assertion: the check is polled every
0.1 s until it is truthy, and the test fails naming what it waited for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T], seconds: float = 180.0) -> T:
    """Poll `check()` until it is truthy and return its value."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")
