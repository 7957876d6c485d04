"""The agent actor on a real one-node Ray instance, talking to a recording scheduler and relay."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.exceptions import ActorDiedError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from agent.actor import AgentActor
from mesh.names import ENV_ACTION, NAMESPACE, RELAY, SCHEDULER, agent_name
from mesh.protocol import Assignment, AttemptReport
from mesh.schema import AgentInfo, LogBatch, MeshConfig
from mesh.waiting import wait_until
from tests.agent_support import exited, marked
from tests.conftest import IN_CI

pytestmark = pytest.mark.integration

CALL_TIMEOUT = 60.0
CONFIG = MeshConfig(load_interval=0.2, kill_grace=0.5, log_flush_interval=0.05,
                    running_report_delay=0)


@ray.remote(num_cpus=0)
class RecordingScheduler:
    def __init__(self) -> None:
        self.loads: list[tuple[str, float]] = []
        self.reports: list[AttemptReport] = []

    async def report_load(self, agent_id: str, load: Any) -> None:
        self.loads.append((agent_id, load.sampled_at))

    async def report_attempt(self, report: AttemptReport) -> None:
        self.reports.append(report)

    async def seen(self) -> tuple[list[tuple[str, float]], list[AttemptReport]]:
        return self.loads, self.reports


@ray.remote(num_cpus=0)
class RecordingRelay:
    def __init__(self) -> None:
        self.lines: dict[int, tuple[str, str]] = {}
        self.closed: dict[tuple[str, int], int] = {}

    async def append(self, batch: LogBatch) -> None:
        for i, text in enumerate(batch.lines):
            self.lines[batch.offset + i] = (batch.stream, text)

    async def close(self, action_id: str, attempt: int, total_lines: int) -> None:
        self.closed[(action_id, attempt)] = total_lines

    async def seen(self) -> tuple[dict[int, tuple[str, str]], dict[tuple[str, int], int]]:
        return self.lines, self.closed


@pytest.fixture(scope="module")
def node_id() -> Iterator[str]:
    # "local": a Ray instance of our own, even if another one runs on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace=NAMESPACE,
             log_to_driver=False)
    try:
        yield str(ray.get_runtime_context().get_node_id())
    finally:
        ray.shutdown()


def call(ref: Any) -> Any:
    return ray.get(ref, timeout=CALL_TIMEOUT)


def assignment(script: str, action_id: str, node_id: str) -> Assignment:
    return Assignment.model_validate({"action": {"command": [script], "shell": True},
                                      "action_id": action_id, "attempt": 1,
                                      "agent_id": node_id, "assigned_at": time.time()})


def test_agent_registers_streams_load_runs_actions_and_takes_them_down_when_killed(
    node_id: str, tmp_path: Path,
) -> None:
    scheduler = RecordingScheduler.options(  # type: ignore[attr-defined]
        name=SCHEDULER, namespace=NAMESPACE).remote()
    relay = RecordingRelay.options(name=RELAY, namespace=NAMESPACE).remote()  # type: ignore[attr-defined]
    # Created exactly as the scheduler creates agents.
    agent = AgentActor.options(  # type: ignore[attr-defined]
        name=agent_name(node_id), namespace=NAMESPACE, lifetime="detached",
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        get_if_exists=True,
    ).remote(node_id, CONFIG)
    try:
        info: AgentInfo = call(agent.hello.remote())
        assert (info.agent_id, info.node_id, info.cpus) == (node_id, node_id, 2.0)
        assert info.memory > 0 and "os:linux" in info.labels
        closed_ref = agent.wait_closed.remote()

        wait_until(lambda: call(scheduler.seen.remote())[0], lambda loads: len(loads) >= 2,
                   what="two load reports")

        call(agent.start.remote(assignment("echo out; echo err >&2", "hello", node_id)))
        reports = wait_until(lambda: call(scheduler.seen.remote())[1],
                             lambda r: [x.stage for x in r] == ["running", "succeeded"],
                             what="running then succeeded")
        assert reports[-1].agent_id == node_id
        lines, closed = call(relay.seen.remote())
        assert closed == {("hello", 1): 2}
        assert sorted(lines.values()) == [("stderr", "err"), ("stdout", "out")]

        # A scheduler that died and came back under its name is found again.
        ray.kill(scheduler, no_restart=True)
        scheduler = RecordingScheduler.options(  # type: ignore[attr-defined]
            name=SCHEDULER, namespace=NAMESPACE).remote()
        call(agent.start.remote(assignment("true", "again", node_id)))
        wait_until(lambda: call(scheduler.seen.remote()),
                   lambda seen: len(seen[0]) >= 1
                   and {x.stage for x in seen[1]} == {"running", "succeeded"},
                   what="loads and both reports at the new scheduler")

        tree = f"tree-{os.getpid()}"  # unique, so that a run beside ours cannot confuse us
        call(agent.start.remote(assignment("sleep 60 & sleep 60 & wait", tree, node_id)))
        wait_until(lambda: marked({ENV_ACTION: tree}), lambda p: len(p) == 3,
                   what="the action's three processes")
        # One that leaves its process group and its marks: only a control group holds it.
        pidfile = tmp_path / "escapee"
        call(agent.start.remote(assignment(
            f"env -i setsid sleep 60 >/dev/null 2>&1 & echo $! > {pidfile}; sleep 60",
            f"escape-{os.getpid()}", node_id)))
        escapee = wait_until(lambda: pidfile.read_text() if pidfile.exists() else "",
                             lambda text: text.endswith("\n"), what="the escapee's pid")
        escapee_pid = int(escapee)
        wait_until(lambda: os.getsid(escapee_pid), lambda sid: sid == escapee_pid,
                   what="the escapee to leave its session")
        info = call(agent.hello.remote())
        contained = info.containment.startswith("cgroup")
        assert contained or not IN_CI, info.containment
        held = call(agent.holdings.remote())
        assert [(h.action_id, h.attempt) for h in held.running][:1] == [(tree, 1)]
        assert {(r.action_id, r.stage) for r in held.ended} >= {("again", "succeeded")}

        # The worker dies as hard as it can: its reaper still takes the action down.
        os.kill(info.pid, signal.SIGKILL)
        with pytest.raises(ActorDiedError):
            call(closed_ref)
        wait_until(lambda: marked({ENV_ACTION: tree}), lambda p: p == [],
                   what="the action's processes to die with their agent")
        if contained:
            wait_until(lambda: exited(escapee_pid), bool,
                       what="the escapee to die with its agent's control groups")
        else:
            os.kill(escapee_pid, signal.SIGKILL)  # the documented limit without cgroups
        wait_until(lambda: exited(info.pid), bool, what="the worker to be gone")
    finally:
        for actor in (agent, scheduler, relay):
            ray.kill(actor, no_restart=True)
