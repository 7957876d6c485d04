"""Submit latency against queue depth: one `submit` with 1,000 and with 20,000 actions waiting.

A local mesh with one 2-CPU agent; the queue is filled with `sleep 600` actions (two run,
the rest wait), then single `client.submit` calls of `sleep 600` are timed at each depth.
Target: p50 at 20,000 queued no more than twice p50 at 1,000. The pure-core equivalent (a
`QuotaScheduler` with one 2-CPU worker, a pass after each `add_request`) is timed in the
same run, so the quota pass's own share is visible.

The machine may be shared: so that another tenant's CPU load does not keep the two sleepers
from starting (the live-load check refuses CPU work on a saturated machine), the mesh runs
with `cpu_busy_percent=100`, and the timing starts only once both run.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable

from bench.harness import local_mesh, median, pct
from mesh import Action
from mesh.client import Client
from mesh.schema import ActionId, AgentId, MeshConfig
from scheduler.core.quota.model import Request
from scheduler.core.quota.run import run_once
from scheduler.core.quota.scheduler import QuotaScheduler

SHALLOW = 1_000
DEEP = int(os.environ.get("DEEP_QUEUE", "20000"))
TIMED = 200  # single submits timed at each depth
CORE_TIMED = 2_000  # the core's are cheap: more of them steady its median
BATCH = 1_000  # submit_many batch size while filling
TARGET = 2.0


def _sleeper() -> Action:
    return Action(command=["sleep", "600"])


def fill(client: Client, queued: int) -> None:
    """Submit in batches until `queued` actions wait (the two running ones aside)."""
    while True:
        waiting = client.counts().get("queued", 0)
        if waiting >= queued:
            return
        client.submit_many([_sleeper() for _ in range(min(BATCH, queued - waiting))])


def wait_running(client: Client, timeout: float = 300.0) -> dict[str, int]:
    """Wait until the agent runs two sleepers (it may refuse work while its load is high)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = client.counts()
        if counts.get("running", 0) == 2:
            return counts
        if time.monotonic() > deadline:
            raise RuntimeError(f"the two sleepers never both ran; last counts {counts}")
        time.sleep(0.2)


def time_submits(client: Client) -> list[float]:
    samples = []
    for _ in range(TIMED):
        start = time.perf_counter()
        handle = client.submit(_sleeper())
        samples.append(time.perf_counter() - start)
        assert handle.id, "a timed submit was not accepted"
    return samples


def mesh_samples() -> dict[int, list[float]]:
    out: dict[int, list[float]] = {}
    with (tempfile.TemporaryDirectory(prefix="meshbench-") as state,
          local_mesh(2, MeshConfig(state_dir=state, cpu_busy_percent=100)) as client):
        for depth in (SHALLOW, DEEP):
            fill(client, depth)
            counts = wait_running(client)
            out[depth] = time_submits(client)
            after = client.counts()
            # Every timed submit was accepted and is waiting (none ran: the agent is full).
            assert after.get("queued", 0) == counts.get("queued", 0) + TIMED, (counts, after)
    return out


def core_samples() -> dict[int, list[float]]:
    """The same load on the quota core alone: one 2-CPU worker, two requests running."""
    qs = QuotaScheduler(0.0)
    qs.mark_idle(AgentId("agent"), frozenset(), 0.0, cpus=2.0)
    clock = [0.0]
    serial = [0]

    def submit() -> Callable[[], None]:
        serial[0] += 1
        clock[0] += 0.001
        request = Request(ActionId(f"action-{serial[0]}"), enqueue_time=clock[0])

        def call() -> None:
            qs.update_time(clock[0])
            qs.add_request(request, clock[0])
            run_once(qs)
        return call

    out: dict[int, list[float]] = {}
    for depth in (SHALLOW, DEEP):
        while len(qs.queued) < depth:  # filled as the mesh is: a pass after each batch
            for _ in range(min(BATCH, depth - len(qs.queued))):
                serial[0] += 1
                qs.add_request(Request(ActionId(f"action-{serial[0]}"), enqueue_time=clock[0]),
                               clock[0])
            run_once(qs)
        assert len(qs.running) == 2
        samples = []
        for _ in range(CORE_TIMED):
            call = submit()
            start = time.perf_counter()
            call()
            samples.append(time.perf_counter() - start)
        assert len(qs.queued) == depth + CORE_TIMED and len(qs.running) == 2
        out[depth] = samples
    return out


def _line(what: str, samples: dict[int, list[float]]) -> float:
    ms = 1000.0
    shallow, deep = samples[SHALLOW], samples[DEEP]
    ratio = median(deep) / median(shallow)
    print(f"{what}: {SHALLOW:,} queued p50 {median(shallow) * ms:.3f} ms p99 "
          f"{pct(shallow, 99) * ms:.3f} ms; {DEEP:,} queued p50 {median(deep) * ms:.3f} ms "
          f"p99 {pct(deep, 99) * ms:.3f} ms; p50 ratio {ratio:.2f} (target <= {TARGET})")
    return ratio


def main() -> None:
    core = core_samples()
    mesh = mesh_samples()
    _line("quota core (add_request + pass)", core)
    _line("mesh submit (client.submit)", mesh)


if __name__ == "__main__":
    main()
