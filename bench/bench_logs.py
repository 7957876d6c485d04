"""Logs: 1,000,000 lines of 64 characters from one action to a following client, against a
Ray streaming generator moving the same lines in the same run; both consumers look at
every line."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Iterator

import ray

from bench.harness import local_mesh, report
from mesh import Action
from mesh.client import Client

LINES = 1_000_000
WIDTH = 64


@ray.remote(num_cpus=0)
class Producer:
    def stream(self, n: int, batch: int) -> Iterator[list[str]]:
        line = "x" * WIDTH
        for start in range(0, n, batch):
            yield [line] * min(batch, n - start)


def generator_rate() -> float:
    producer = Producer.remote()  # type: ignore[attr-defined]
    start = time.perf_counter()
    got = 0
    for ref in producer.stream.options(num_returns="streaming").remote(LINES, 1000):
        # The same work per line as the mesh's consumer below: a follower reads lines.
        for line in ray.get(ref):
            got += 1
            assert len(line) == WIDTH
    elapsed = time.perf_counter() - start
    assert got == LINES
    return LINES / elapsed


def mesh_rate(client: Client) -> float:
    script = (f"import sys\nline = 'x' * {WIDTH} + '\\n'\n"
              f"sys.stdout.write(line * {LINES})\n")
    start = time.perf_counter()
    handle = client.submit(Action(command=[sys.executable, "-c", script]))
    got = 0
    for line in handle.logs(follow=True):
        got += 1
        assert len(line.text) == WIDTH
    elapsed = time.perf_counter() - start
    assert got == LINES, f"{got} lines arrived of {LINES}"
    assert handle.result(timeout=60).ok
    return LINES / elapsed


ROUNDS = 3


def main() -> None:
    # Rounds alternate, so a noisy spell of the shared machine falls on both sides.
    bases, ours = [], []
    with local_mesh(num_cpus=2) as client:
        for _ in range(ROUNDS):
            bases.append(generator_rate())
            ours.append(mesh_rate(client))
    print("rounds (mesh, baseline):",
          ", ".join(f"{m:,.0f}/{b:,.0f}" for m, b in zip(ours, bases, strict=True)))
    report("logs (1M x 64 chars), median of 3", statistics.median(ours),
           statistics.median(bases), "lines/s", ">= 0.5")


if __name__ == "__main__":
    main()
