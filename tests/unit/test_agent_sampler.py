"""Load samples of this machine."""

from __future__ import annotations

import psutil

from agent.sampler import LoadSampler, sample_load


def test_a_sample_describes_this_machine_at_the_given_time() -> None:
    load = LoadSampler().sample(123.5)
    assert load.sampled_at == 123.5
    assert load.cpu_count == psutil.cpu_count(logical=True)
    assert 0.0 <= load.cpu_percent <= 100.0
    assert load.memory_total == psutil.virtual_memory().total
    assert 0 < load.memory_available <= load.memory_total
    assert 0 < load.memory_used <= load.memory_total
    assert all(x >= 0.0 for x in load.load_avg)


def test_consecutive_samples_are_independent_values() -> None:
    first, second = sample_load(1.0), sample_load(2.0)
    assert (first.sampled_at, second.sampled_at) == (1.0, 2.0)
    assert first.cpu_count == second.cpu_count
