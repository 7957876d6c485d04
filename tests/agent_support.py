"""What agent tests share: the executor's sinks in memory, recording every call, executors and
assignments to drive them, and a census of live processes read with psutil (independently
of the agent's own scanner)."""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psutil

from agent.ended import REMEMBER_FINISHED
from agent.executor import Executor
from mesh.protocol import Assignment, AttemptReport
from mesh.schema import ActionId, AgentId, LogBatch, MeshConfig
from mesh.waiting import async_wait_until


class RecordingSinks:
    """Both executor sinks in memory; `events` keeps one ordered trail of every call."""

    def __init__(self, push_delay: float = 0.0) -> None:
        self.push_delay = push_delay
        self.reports: list[AttemptReport] = []
        self.batches: list[LogBatch] = []
        self.closed: dict[tuple[str, int], int] = {}
        self.events: list[tuple[str, str, int, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def report(self, report: AttemptReport) -> None:
        self.reports.append(report)
        self.events.append(("report", report.action_id, report.attempt, report.stage))

    async def push(self, batch: LogBatch) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.push_delay:
                await asyncio.sleep(self.push_delay)
            self.batches.append(batch)
        finally:
            self.in_flight -= 1

    async def close(self, action_id: ActionId, attempt: int, total_lines: int) -> None:
        self.closed[(action_id, attempt)] = total_lines
        self.events.append(("close", action_id, attempt, str(total_lines)))

    def stages(self, action_id: str, attempt: int = 1) -> list[str]:
        return [r.stage for r in self.reports if (r.action_id, r.attempt) == (action_id, attempt)]

    def end(self, action_id: str, attempt: int = 1) -> AttemptReport | None:
        ends = [r for r in self.reports if (r.action_id, r.attempt) == (action_id, attempt)
                and r.stage != "running"]
        return ends[-1] if ends else None

    def lines(self, action_id: str, attempt: int = 1) -> list[tuple[int, str, str]]:
        """(offset, stream, text) of every line received, sorted by offset."""
        out: list[tuple[int, str, str]] = []
        for batch in self.batches:
            if (batch.action_id, batch.attempt) == (action_id, attempt):
                out.extend((batch.offset + i, batch.stream, text)
                           for i, text in enumerate(batch.lines))
        return sorted(out)


def marked(marks: dict[str, str]) -> list[int]:
    """Live (non-zombie) processes whose environment has every `name=value` of `marks`.

    Read with psutil, independently of the agent's own /proc scanner. Tests mark with a
    token unique to their process, so that test runs side by side do not see each other.
    """
    pids: list[int] = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            env = proc.environ()
            if all(env.get(name) == value for name, value in marks.items()):
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return pids


def in_group(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    pids: list[int] = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, ProcessLookupError):
            continue
    return pids


def exited(pid: int) -> bool:
    """The process has ended; a zombie counts, since its reaping is up to its new parent."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


CONFIG = MeshConfig(kill_grace=0.3, log_flush_interval=0.05, running_report_delay=0)
_tokens = itertools.count()


def assignment(command: list[str], action_id: str = "a1", attempt: int = 1,
               assigned_at: float = 1.0, **action: Any) -> Assignment:
    return Assignment.model_validate({
        "action": {"command": command, **action},
        "action_id": action_id,
        "attempt": attempt,
        "agent_id": "agent-test",
        "assigned_at": assigned_at,
    })


def shell(script: str, action_id: str = "a1", **action: Any) -> Assignment:
    return assignment([script], action_id, shell=True, **action)


@asynccontextmanager
async def executor(sinks: RecordingSinks, config: MeshConfig = CONFIG,
                   remember: int = REMEMBER_FINISHED) -> AsyncIterator[Executor]:
    """An executor reporting to `sinks`, its clock ticking 1000, 1001, ...; shut down (its
    attempts killed, its reaper closed) on the way out. Its workspaces are in a temporary
    directory of its own, unless `config` names one."""
    clock = itertools.count(1000.0)
    with tempfile.TemporaryDirectory(prefix="meshwork-") as work:
        if config.workspace_dir is None:
            config = config.model_copy(update={"workspace_dir": work})
        ex = Executor(AgentId("agent-test"), f"test-{os.getpid()}-{next(_tokens)}", config,
                      sinks, sinks, clock=lambda: float(next(clock)), remember=remember)
        try:
            yield ex
        finally:
            await ex.shutdown()


async def ended(sinks: RecordingSinks, action_id: str = "a1", attempt: int = 1,
                timeout: float = 10.0) -> None:
    await async_wait_until(lambda: sinks.stages(action_id, attempt),
                           lambda s: len(s) > 0 and s[-1] != "running", timeout,
                           f"{action_id} attempt {attempt} to end")
