"""An attempt's process on the event loop, with real processes: output, exit, kill and reap,
with a pidfd and with asyncio's child watcher where there is none."""

from __future__ import annotations

import asyncio
import os
import signal

import psutil
import pytest

from agent.child import ChildProcess
from agent.logship import LogShipper
from mesh.schema import ActionId
from tests.agent_support import RecordingSinks

# A hang fails within 30 s instead of stalling the run.
pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=["pidfd", "child watcher"])
def watching(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with exits seen through a pidfd, and as where Linux has none."""
    if request.param == "child watcher":
        def no_pidfd(pid: int) -> int:
            raise OSError(38, "Function not implemented")

        monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    return str(request.param)


def child_with(sinks: RecordingSinks) -> ChildProcess:
    return ChildProcess(LogShipper(sinks, ActionId("a1"), 1, 1 << 20, 0.01, 4))


async def test_output_and_exit_code_arrive_and_the_process_is_reaped(watching: str) -> None:
    sinks = RecordingSinks()
    child = child_with(sinks)
    child.spawn(["sh", "-c", "echo out; echo err >&2; printf tail; exit 3"], None,
                dict(os.environ))
    await asyncio.wait_for(asyncio.gather(child.exited, child.pipes_closed), 10)
    assert child.returncode == 3
    await child.shipper.finish()
    assert sorted((s, t) for _, s, t in sinks.lines("a1")) == [
        ("stderr", "err"), ("stdout", "out"), ("stdout", "tail")]
    assert not psutil.pid_exists(child.pid), "reaped, not left a zombie"


async def test_closing_a_running_child_kills_and_reaps_it(watching: str) -> None:
    child = child_with(RecordingSinks())
    child.spawn(["sleep", "60"], None, dict(os.environ))
    assert os.getsid(child.pid) == os.getpgid(child.pid) == child.pid, "a session of its own"
    child.close()
    await asyncio.wait_for(child.exited, 10)
    assert child.returncode == -signal.SIGKILL and child.pipes_closed.done()
    assert not psutil.pid_exists(child.pid)


async def test_exit_is_seen_while_a_background_process_keeps_the_pipes_open(
        watching: str) -> None:
    child = child_with(RecordingSinks())
    child.spawn(["sh", "-c", "sleep 60 & exit 0"], None, dict(os.environ))
    await asyncio.wait_for(child.exited, 10)
    assert child.returncode == 0 and not child.pipes_closed.done()
    os.killpg(child.pid, signal.SIGKILL)
    await asyncio.wait_for(child.pipes_closed, 10)


def test_a_command_that_does_not_exist_raises_at_spawn() -> None:
    async def body() -> None:
        child = child_with(RecordingSinks())
        with pytest.raises(FileNotFoundError):
            child.spawn(["/nonexistent/command"], None, dict(os.environ))
        assert not child.exited.done() and child.pid == 0

    asyncio.run(body())
