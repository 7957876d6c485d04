"""Measuring the agent's machine: one psutil sample as a `mesh.schema.Load`."""

from __future__ import annotations

import os

import psutil

from mesh.schema import Load


def _load_avg() -> tuple[float, float, float]:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:  # not every platform keeps one
        return (0.0, 0.0, 0.0)
    return (one, five, fifteen)


def sample_load(now: float) -> Load:
    """Sample the machine now; `now` is the agent's wall-clock time, stamped on the sample.

    CPU percent is measured since the previous call in this process (psutil's interval=None,
    which never blocks), so the first call of a process reads 0.0; `LoadSampler` primes it.
    """
    memory = psutil.virtual_memory()
    return Load(
        # psutil can overshoot 100 by rounding on some kernels; the schema caps it.
        cpu_percent=min(100.0, max(0.0, psutil.cpu_percent(interval=None))),
        cpu_count=psutil.cpu_count(logical=True) or 1,
        memory_total=memory.total,
        memory_used=memory.used,
        memory_available=memory.available,
        load_avg=_load_avg(),
        sampled_at=now,
    )


class LoadSampler:
    """A sampler whose first sample already covers the time since it was made."""

    def __init__(self) -> None:
        psutil.cpu_percent(interval=None)

    def sample(self, now: float) -> Load:
        return sample_load(now)
