"""A/B rounds: a fresh local mesh with one setting, then with another, alternating, each
timed on throughput and latency of `true`; what the benchmarks of one setting use."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.bench_latency import mesh_latencies
from bench.bench_throughput import mesh_rate
from bench.harness import local_mesh, median, report
from mesh import Action
from mesh.schema import AgentStatus

ROUNDS = 3
LATENCY_SAMPLES = 200


@dataclass
class Round:
    rate: float  # actions per second
    p50: float  # submit -> result, seconds
    agent: AgentStatus  # the pool's one agent, as it was seen


def one_round(**settings: Any) -> Round:
    with local_mesh(num_cpus=2, **settings) as client:
        for _ in range(20):
            client.submit(Action(command=["true"])).result(timeout=30)  # warm up
        rate = mesh_rate()
        way = "submit, then result"
        _, to_result = mesh_latencies(client, LATENCY_SAMPLES, [way])[way]
        return Round(rate, median(to_result), client.pool()[0])


def compare(name: str, ours: dict[str, Any], theirs: dict[str, Any], target: str,
            ) -> tuple[list[Round], list[Round]]:
    """Rounds alternating `ours` and `theirs` settings (so a slow spell of this shared
    machine falls on both); prints both ratios and returns the rounds."""
    a, b = [], []
    for _ in range(ROUNDS):
        a.append(one_round(**ours))
        b.append(one_round(**theirs))
    rates = ", ".join(f"{x.rate / y.rate:.2f}" for x, y in zip(a, b, strict=True))
    print(f"throughput per round ({name}): {rates}")
    report(f"throughput, {name} (2,000 x `true`, median of {ROUNDS} rounds)",
           statistics.median(x.rate for x in a), statistics.median(y.rate for y in b),
           "actions/s", target)
    report(f"submit -> result p50, {name} (median of {ROUNDS} rounds)",
           statistics.median(x.p50 for x in a) * 1000,
           statistics.median(y.p50 for y in b) * 1000, "ms", "reported",
           higher_is_better=False)
    return a, b
