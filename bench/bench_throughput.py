"""Throughput: 2,000 `true` actions through the mesh against 2,000 Ray tasks running `true`."""

from __future__ import annotations

import statistics
import subprocess
import time

import ray

from bench.harness import local_mesh, report
from mesh import Action

N = 2000
ROUNDS = 3


@ray.remote(num_cpus=1)
def run_true() -> int:
    return subprocess.run(["true"], check=False).returncode


def ray_tasks_rate() -> float:
    ray.get([run_true.remote() for _ in range(50)])  # warm the worker pool
    start = time.perf_counter()
    codes = ray.get([run_true.remote() for _ in range(N)])
    elapsed = time.perf_counter() - start
    assert codes == [0] * N, "a baseline task failed"
    return N / elapsed


def mesh_rate() -> float:
    from mesh.client import Client

    client = Client()
    before = client.counts().get("succeeded", 0)
    start = time.perf_counter()
    client.submit_many([Action(command=["true"], cpus=1) for _ in range(N)])
    while True:
        counts = client.counts()
        if counts.get("succeeded", 0) - before >= N:
            break
        assert counts.get("failed", 0) == 0, f"mesh actions failed: {counts}"
        time.sleep(0.05)  # polling costs the scheduler a call each time; keep it rare
    return N / (time.perf_counter() - start)


def main() -> None:
    # Rounds alternate, so a slow spell of this shared machine falls on both sides.
    baselines, ours = [], []
    with local_mesh(num_cpus=2):
        for _ in range(ROUNDS):
            baselines.append(ray_tasks_rate())
            ours.append(mesh_rate())
    ratios = ", ".join(f"{m / b:.2f}" for m, b in zip(ours, baselines, strict=True))
    print(f"per round (mesh / Ray tasks): {ratios}")
    report(f"throughput (2,000 x `true`, median of {ROUNDS} rounds)", statistics.median(ours),
           statistics.median(baselines), "actions/s", ">= 0.9")


if __name__ == "__main__":
    main()
