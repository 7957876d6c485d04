"""`mesh.waiting`: a wait that never ends fails with what it saw last."""

from __future__ import annotations

import itertools

import pytest

from mesh.errors import MeshError, WaitTimeout
from mesh.waiting import async_wait_until, wait_until


def test_wait_until_returns_the_first_observation_that_holds() -> None:
    counter = itertools.count()
    assert wait_until(lambda: next(counter), lambda n: n >= 3, interval=0) == 3


def test_wait_until_names_the_last_observation_on_timeout() -> None:
    with pytest.raises(WaitTimeout, match="waiting for eight; last saw 7") as timed_out:
        wait_until(lambda: 7, lambda v: v == 8, timeout=0.05, what="eight")
    assert timed_out.value.last == 7
    assert isinstance(timed_out.value, MeshError) and isinstance(timed_out.value, TimeoutError)


async def test_async_wait_until_names_the_last_observation_on_timeout() -> None:
    with pytest.raises(WaitTimeout, match="waiting for eight; last saw 7"):
        await async_wait_until(lambda: 7, lambda v: v == 8, timeout=0.05, what="eight")
