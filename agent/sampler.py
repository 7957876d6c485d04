"""Measuring the agent's machine: one psutil sample as a `mesh.schema.Load`."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection

import psutil

from agent.cpushare import AttemptCpu
from mesh.schema import Load


def _load_avg() -> tuple[float, float, float]:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:  # not every platform keeps one
        return (0.0, 0.0, 0.0)
    return (one, five, fifteen)


def sample_load(now: float, mesh_cpu_percent: float = 0.0) -> Load:
    """Sample the machine now; `now` is the agent's wall-clock time, stamped on the sample;
    `mesh_cpu_percent` is what the agent's attempts used of it over the same interval.

    CPU percent is measured since the previous call in this process (psutil's interval=None,
    which never blocks), so the first call of a process reads 0.0; `LoadSampler` primes it.
    """
    memory = psutil.virtual_memory()
    return Load(
        # psutil can overshoot 100 by rounding on some kernels; the schema caps it.
        cpu_percent=min(100.0, max(0.0, psutil.cpu_percent(interval=None))),
        mesh_cpu_percent=mesh_cpu_percent,
        cpu_count=psutil.cpu_count(logical=True) or 1,
        memory_total=memory.total,
        memory_used=memory.used,
        memory_available=memory.available,
        load_avg=_load_avg(),
        sampled_at=now,
    )


class LoadSampler:
    """A sampler whose first sample already covers the time since it was made.

    `groups` gives the process groups of the attempts running now (the executor's
    `process_groups`), `parents` the helpers that start and reap attempts (its
    `attempt_parents`); their CPU is reported as the mesh's share of the machine's.
    """

    def __init__(self, groups: Callable[[], Collection[int]] = tuple,
                 parents: Callable[[], Collection[int]] = tuple) -> None:
        self.attempts = AttemptCpu(groups, psutil.cpu_count(logical=True) or 1,
                                   parents=parents)
        psutil.cpu_percent(interval=None)

    def sample(self, now: float) -> Load:
        # Both figures cover the interval since the previous sample: taken back to back.
        return sample_load(now, self.attempts.percent())
