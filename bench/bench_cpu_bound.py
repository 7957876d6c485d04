"""CPU-bound actions through a 2-CPU agent against running them directly; outside load waits.

Phase one times 40 half-second busy loops through the mesh against the same commands run as
plain subprocesses two at a time. Phase two saturates the machine from outside the mesh and
shows a new action waiting, with the reason, until that load is killed.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import psutil

from bench.harness import local_mesh, report
from mesh import Action, Stage
from mesh.client import Client
from mesh.errors import ActionTimeout
from mesh.schema import ActionStatus, AgentStatus, MeshConfig

T = TypeVar("T")

N = 40
CPUS = 2  # the agent's, and how many the baseline runs at a time
BUSY = 0.5
# A pure CPU loop that ends by wall time, so others' load on this shared machine does not
# lengthen either side's run. timeout ends it with 124: that is success, anything else not.
COMMAND = f"timeout {BUSY} sh -c 'while :; do :; done'; [ $? -eq 124 ]"
SPIN = ["sh", "-c", "while :; do :; done"]
# Load reports that must show the saturation while the action stays queued.
QUEUED_REPORTS = 6


def until(observe: Callable[[], T], ok: Callable[[T], bool], timeout: float, what: str) -> T:
    """Poll `observe` until `ok`; fail with the last observation after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        seen = observe()
        if ok(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last saw {seen!r}")
        time.sleep(0.05)


def direct_seconds() -> float:
    """The same commands as plain subprocesses, CPUS at a time."""
    def one(_: int) -> int:
        return subprocess.run(["/bin/sh", "-c", COMMAND], check=False).returncode

    start = time.perf_counter()
    with ThreadPoolExecutor(CPUS) as pool:
        codes = list(pool.map(one, range(N)))
    elapsed = time.perf_counter() - start
    assert codes == [0] * N, f"a direct run failed: {codes}"
    return elapsed


def room_for_work(client: Client, limit: float) -> None:
    """The machine is shared: wait (at most a minute) for a load report that lets work on,
    so the timed run measures the mesh rather than how long others keep the machine
    saturated (then the mesh rightly waits). Either way, say what was seen."""
    start = time.perf_counter()
    try:
        load = until(lambda: only_agent(client).load,
                     lambda load: load is not None and load.foreign_cpu_percent < limit,
                     timeout=60, what="a load report below the limit")
    except AssertionError:
        load = only_agent(client).load
        print("others kept the machine saturated for a minute; timing the mesh anyway")
    assert load is not None
    print(f"before the mesh run (waited {time.perf_counter() - start:.1f} s) the agent "
          f"reported CPU {load.cpu_percent:.0f}%, {load.mesh_cpu_percent:.0f}% of it ours")


def mesh_seconds(client: Client) -> float:
    submitted = time.time()
    start = time.perf_counter()
    handles = client.submit_many([Action(command=[COMMAND], shell=True, cpus=1)
                                  for _ in range(N)])
    try:
        results = [h.result(timeout=300) for h in handles]
    except ActionTimeout:
        queued = client.list(stage=Stage.QUEUED, limit=1)
        print(f"timed out: {client.counts()}; agent load {only_agent(client).load}; a queued "
              f"one waits for: {client.get(queued[0].id).pending if queued else None}")
        raise
    elapsed = time.perf_counter() - start
    failed = [r for r in results if r.stage is not Stage.SUCCEEDED]
    assert not failed, f"mesh actions failed: {failed[:3]}"
    occupancy(results, submitted)
    return elapsed


def occupancy(results: list[ActionStatus], submitted: float) -> None:
    """How full the agent's slots were, from the scheduler's records: a slot counts as
    taken from the assignment to the end of the attempt."""
    spans = [(a.assigned_at, a.finished_at) for r in results for a in r.attempts
             if a.finished_at is not None]
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    taken = sum(e - s for s, e in spans)
    print(f"first assignment {first - submitted:.2f} s after the submit; slots taken "
          f"{100 * taken / (CPUS * (last - first)):.1f}% of the {last - first:.2f} s from it "
          f"to the last end")


def only_agent(client: Client) -> AgentStatus:
    [agent] = client.pool()
    return agent


def saturated_from_outside(client: Client, limit: float) -> None:
    """Busy loops outside the mesh on every CPU: a 1-CPU action waits, with the reason, for
    as long as they run, and starts once they are killed."""
    spinners = [subprocess.Popen(SPIN, start_new_session=True)
                for _ in range(psutil.cpu_count(logical=True) or 1)]
    try:
        seen = until(lambda: only_agent(client).load,
                     lambda load: load is not None and load.foreign_cpu_percent >= limit,
                     timeout=30, what="the agent reporting the outside load")
        assert seen is not None
        print(f"outside load: {len(spinners)} busy loops; the agent reports CPU "
              f"{seen.cpu_percent:.0f}%, {seen.mesh_cpu_percent:.0f}% of it ours")
        handle = client.submit(Action(command=[COMMAND], shell=True, cpus=1))
        interval = MeshConfig().load_interval
        reason = ""

        def still_queued() -> float:
            nonlocal reason
            status = handle.status()
            assert status.stage is Stage.QUEUED, f"started beside the outside load: {status}"
            reason = status.pending.summary if status.pending else ""
            load = only_agent(client).load
            return load.sampled_at if load is not None else 0.0

        since = seen.sampled_at
        until(still_queued, lambda at: at >= since + QUEUED_REPORTS * interval,
              timeout=60, what=f"{QUEUED_REPORTS} more load reports")
        print(f"after {QUEUED_REPORTS} more load reports it is still queued: {reason}")
        assert "saturated by other processes" in reason, reason
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()
    killed = time.time()
    # Others share this machine: record what the load reports said until it started.
    reports: dict[float, float] = {}

    def waiting() -> bool:
        # The status first: once it has left the queue, the report read next is (but for
        # a report arriving within the poll) the one that let it on.
        queued = handle.status().stage is Stage.QUEUED
        load = only_agent(client).load
        if load is not None and load.sampled_at > killed:
            reports[load.sampled_at] = load.foreign_cpu_percent
        return queued

    until(waiting, lambda queued: not queued, timeout=300, what="the action to leave the queue")
    result = handle.result(timeout=60)
    assert result.stage is Stage.SUCCEEDED, result
    started = result.attempts[-1].started_at
    assert started is not None
    last = ", ".join(f"{f:.0f}%" for _, f in sorted(reports.items())[-8:])
    print(f"outside load killed: the action started {started - killed:.2f} s later and "
          f"{result.stage.value}; load reports after the kill (every {interval:g} s), CPU not "
          f"ours: {len(reports)} seen, the last ones {last}")


def main() -> None:
    limit = MeshConfig().cpu_busy_percent
    with local_mesh(num_cpus=CPUS) as client:
        # Warm up the agent; asking no CPU, it runs even while others saturate the machine.
        client.submit(Action(command=["true"], cpus=0)).result(timeout=30)
        baseline = direct_seconds()
        room_for_work(client, limit)
        ours = mesh_seconds(client)
        report(f"cpu-bound ({N} x {BUSY:g} s busy loop, 1 CPU each, {CPUS}-CPU agent)", ours,
               baseline, "s", "<= 1.1", higher_is_better=False)
        saturated_from_outside(client, limit)


if __name__ == "__main__":
    main()
