"""Waiting on a condition in tests, failing with the last observation instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _expired(deadline: float, timeout: float, what: str, seen: object) -> None:
    if time.monotonic() > deadline:
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; "
                             f"last saw {seen!r}")


def wait_until(observe: Callable[[], T], ok: Callable[[T], bool], timeout: float = 30.0,
               what: str = "condition", interval: float = 0.02) -> T:
    """Call `observe` until `ok(observation)`; on timeout fail with the last observation."""
    deadline = time.monotonic() + timeout
    while True:
        seen = observe()
        if ok(seen):
            return seen
        _expired(deadline, timeout, what, seen)
        time.sleep(interval)


async def async_wait_until(observe: Callable[[], T], ok: Callable[[T], bool],
                           timeout: float = 30.0, what: str = "condition",
                           interval: float = 0.01) -> T:
    """`wait_until` for code running on an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        seen = observe()
        if ok(seen):
            return seen
        _expired(deadline, timeout, what, seen)
        await asyncio.sleep(interval)
