"""Test-wide helpers: waiting on a condition and reporting what was last seen."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# CI must never skip silently: a missing dependency fails there instead.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def wait_for(observe: Callable[[], T], done: Callable[[T], bool], timeout: float = 30.0,
             what: str = "condition", interval: float = 0.05) -> T:
    """Call `observe` until `done(observation)`; on timeout fail with the last observation."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = observe()
        if done(last):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; "
                                 f"last seen: {last!r}")
        time.sleep(interval)
