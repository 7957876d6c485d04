"""Which load samples an agent sends: material changes at once, the rest as a heartbeat."""

from __future__ import annotations

from typing import Any

import pytest

from agent.loadfilter import LoadFilter
from mesh.schema import Load
from tests.builders import GIB, load


def sample(at: float, cpu: float = 10.0, mesh: float = 0.0, available: int = 8 * GIB) -> Load:
    return load(cpu_percent=cpu, mesh=mesh, at=at).model_copy(
        update={"memory_total": 8 * GIB, "memory_available": available})


@pytest.mark.parametrize(("change", "sent"), [
    ({}, False),
    ({"cpu": 30.0}, False),
    ({"cpu": 59.9}, False),
    ({"cpu": 60.0}, True),
    ({"mesh": 50.0}, True),
    ({"available": 8 * GIB - 80 * 2**20}, False),
    ({"available": 8 * GIB - 90 * 2**20}, True),
])
def test_a_sample_goes_when_it_moved_materially(change: dict[str, Any], sent: bool) -> None:
    worth = LoadFilter(heartbeat=2.0, cpu_busy_percent=95.0)
    assert worth.due(sample(0.0))
    assert worth.due(sample(0.5, **change)) is sent


def test_crossing_the_busy_limit_goes_however_small_the_step() -> None:
    worth = LoadFilter(heartbeat=2.0, cpu_busy_percent=95.0)
    assert worth.due(sample(0.0, cpu=93.0))
    assert worth.due(sample(0.5, cpu=96.0))
    assert not worth.due(sample(1.0, cpu=97.0))
    # The mesh's own CPU does not count against the limit: 96 with 10 of it ours is 86.
    assert worth.due(sample(1.5, cpu=96.0, mesh=10.0))


def test_an_unchanged_load_goes_as_a_heartbeat_counted_from_the_last_sent() -> None:
    worth = LoadFilter(heartbeat=2.0, cpu_busy_percent=95.0)
    sent = [t / 2 for t in range(13) if worth.due(sample(t / 2))]
    assert sent == [0.0, 2.0, 4.0, 6.0]
    assert worth.due(sample(6.5, cpu=70.0))
    assert [t for t in (7.0, 8.0, 8.5) if worth.due(sample(t, cpu=70.0))] == [8.5]
