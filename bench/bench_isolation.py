"""What containing attempts costs: throughput and latency of `true` actions with each attempt
in a control group of its own, against the same runs with the process group alone.

The clean environment and the private workspace are always on (there is no mesh without
them to compare with); `agent_costs` times them apart, per attempt, beside a spawn.
"""

from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from agent.workspace import Workspaces
from bench.bench_latency import mesh_latencies
from bench.bench_throughput import mesh_rate
from bench.harness import local_mesh, median, report
from mesh import Action

ROUNDS = 3
LATENCY_SAMPLES = 200


def one_round(cgroups: bool) -> tuple[float, float, str]:
    """Throughput (actions/s), submit -> result p50 (s), and what contained the attempts."""
    with local_mesh(num_cpus=2, cgroups=cgroups) as client:
        containment = client.pool()[0].info.containment
        for _ in range(20):
            client.submit(Action(command=["true"])).result(timeout=30)  # warm up
        rate = mesh_rate()
        _, to_result = mesh_latencies(client, LATENCY_SAMPLES)
    return rate, median(to_result), containment


def agent_costs(n: int = 500) -> None:
    """Per attempt: a private workspace made and removed, against spawning `true`."""
    with tempfile.TemporaryDirectory(prefix="meshbench-work-") as root:
        workspaces = Workspaces(Path(root) / "agent")
        workspaces.clear()
        start = time.perf_counter()
        for i in range(n):
            workspaces.remove(workspaces.make(f"a{i}", 1))
        workspace = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for _ in range(n):
        subprocess.Popen(["true"], start_new_session=True).wait()
    spawn = (time.perf_counter() - start) / n
    print(f"per attempt: workspace made and removed {workspace * 1e6:.0f} us; "
          f"spawning `true` {spawn * 1e6:.0f} us")


def main() -> None:
    # Rounds alternate, so a slow spell of this shared machine falls on both sides.
    contained, plain = [], []
    for _ in range(ROUNDS):
        contained.append(one_round(cgroups=True))
        plain.append(one_round(cgroups=False))
    print(f"contained by: {contained[0][2]}; baseline: {plain[0][2]}")
    rates = ", ".join(f"{c[0] / p[0]:.2f}" for c, p in zip(contained, plain, strict=True))
    print(f"throughput per round (cgroup / process group): {rates}")
    report(f"throughput with cgroups (2,000 x `true`, median of {ROUNDS} rounds)",
           statistics.median(c[0] for c in contained), statistics.median(p[0] for p in plain),
           "actions/s", ">= 0.9")
    report(f"submit -> result p50 with cgroups (median of {ROUNDS} rounds)",
           statistics.median(c[1] for c in contained) * 1000,
           statistics.median(p[1] for p in plain) * 1000, "ms", "reported",
           higher_is_better=False)
    agent_costs()


if __name__ == "__main__":
    main()
