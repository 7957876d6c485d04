"""Waiting on a condition instead of sleeping, for scripts, benchmarks and tests driving a mesh.

Call `observe` until `ok(observation)` holds; on timeout fail with the last observation, so
that a wait that never ends says what it saw rather than only that it gave up::

    from mesh.waiting import wait_until

    pool = wait_until(client.pool, lambda p: len(p) == 3 and all(a.load for a in p),
                      timeout=60, what="three agents reporting load")

`async_wait_until` is the same for code running on an event loop (it sleeps with
`asyncio.sleep`, so the loop keeps running what is being waited for). Both raise
`mesh.errors.WaitTimeout` (a `MeshError` and a `TimeoutError`), whose `last` attribute is the
last observation. It imports no Ray, so a script can wait before it connects.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from mesh.errors import WaitTimeout

T = TypeVar("T")


def _give_up_if_past(deadline: float, timeout: float, what: str, seen: object) -> None:
    if time.monotonic() > deadline:
        raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}; last saw {seen!r}",
                          seen)


def wait_until(observe: Callable[[], T], ok: Callable[[T], bool], timeout: float = 30.0,
               what: str = "condition", interval: float = 0.02) -> T:
    """Call `observe` every `interval` seconds until `ok(observation)`; return that
    observation. Once `timeout` seconds have passed, raise `WaitTimeout` naming `what` and
    the last observation."""
    deadline = time.monotonic() + timeout
    while True:
        seen = observe()
        if ok(seen):
            return seen
        _give_up_if_past(deadline, timeout, what, seen)
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
        _give_up_if_past(deadline, timeout, what, seen)
        await asyncio.sleep(interval)
