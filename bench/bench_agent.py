"""The agent's executor alone: `true` attempts two at a time, each started as the last ends
(no Ray, no link), against the same commands spawned directly, two at a time."""

from __future__ import annotations

import asyncio
import itertools
import os
import resource
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import psutil

from agent.executor import Executor
from bench.harness import report
from mesh.protocol import Assignment, AttemptReport
from mesh.schema import ActionId, AgentId, LogBatch, MeshConfig

N = 2000
SLOTS = 2
WARM_UP = 20


def cpu_seconds(helper: int | None = None) -> float:
    """This process's CPU, and the spawn server's (`helper`) where attempts start through
    one; their children's apart (they are the commands)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    used = own.ru_utime + own.ru_stime
    if helper is not None:
        times = psutil.Process(helper).cpu_times()
        used += times.user + times.system
    return used


@dataclass
class Chain:
    """Report and log sink that starts the next attempt as each one ends."""

    executor: Executor | None = None
    todo: int = 0
    ended: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    ids: itertools.count[int] = field(default_factory=itertools.count)
    failed: list[AttemptReport] = field(default_factory=list)

    def report(self, report: AttemptReport) -> None:
        if report.stage == "running":
            return
        if report.stage != "succeeded":
            self.failed.append(report)
        self.ended += 1
        if self.todo > 0:
            self.todo -= 1
            self.start()
        elif self.ended >= N:
            self.done.set()

    def start(self) -> None:
        assert self.executor is not None
        assignment = Assignment.model_validate({
            "action": {"command": ["true"]}, "action_id": f"a{next(self.ids)}",
            "attempt": 1, "agent_id": "bench-agent", "assigned_at": 1.0})
        asyncio.get_running_loop().create_task(self.executor.start(assignment))

    async def push(self, batch: LogBatch) -> None:
        return None

    async def close(self, action_id: ActionId, attempt: int, total_lines: int) -> None:
        return None


async def executor_run() -> tuple[float, float, str]:
    """Attempts a second, CPU per attempt, and how attempts are contained."""
    with tempfile.TemporaryDirectory(prefix="meshbench-agent-") as work:
        chain = Chain()
        # Attempts of `true` end before the running report would go: only end reports.
        config = MeshConfig(workspace_dir=work, running_report_delay=0.5)
        chain.executor = executor = Executor(AgentId("bench-agent"), f"bench-{os.getpid()}",
                                             config, chain, chain)
        try:
            await executor.prepare()
            for _ in range(WARM_UP):
                chain.start()
            while chain.ended < WARM_UP:
                await asyncio.sleep(0.01)
            chain.ended, chain.todo = 0, N - SLOTS
            server = executor.spawner_pid
            began, cpu = time.perf_counter(), cpu_seconds(server)
            for _ in range(SLOTS):
                chain.start()
            await chain.done.wait()
            elapsed, used = time.perf_counter() - began, cpu_seconds(server) - cpu
            assert not chain.failed, f"attempts failed: {chain.failed[:3]}"
            return N / elapsed, used / N, executor.containment
        finally:
            await executor.shutdown()


def direct_run() -> tuple[float, float]:
    """The same commands spawned directly, two at a time: spawns a second, CPU per spawn."""
    began, cpu = time.perf_counter(), cpu_seconds()
    running: list[subprocess.Popen[bytes]] = []
    for _ in range(N):
        if len(running) == SLOTS:
            finished = running.pop(0)
            assert finished.wait() == 0
        running.append(subprocess.Popen(["true"], start_new_session=True))
    for process in running:
        assert process.wait() == 0
    return N / (time.perf_counter() - began), (cpu_seconds() - cpu) / N


def main() -> None:
    rounds = [(asyncio.run(executor_run()), direct_run()) for _ in range(3)]
    for (rate, cpu, _), (direct, direct_cpu) in rounds:
        print(f"executor {rate:,.0f}/s at {cpu * 1e3:.2f} ms of CPU per attempt; "
              f"direct {direct:,.0f}/s at {direct_cpu * 1e3:.2f} ms per spawn")
    ours = sorted(r[0][0] for r in rounds)[1]
    baseline = sorted(r[1][0] for r in rounds)[1]
    print(f"contained by: {rounds[0][0][2]}")
    report("executor throughput (`true`, two at a time, median of 3 rounds)", ours, baseline,
           "attempts/s", "reported")


if __name__ == "__main__":
    main()
