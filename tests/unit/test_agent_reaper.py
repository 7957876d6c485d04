"""The reaper kills an agent's actions when the agent goes, however it goes."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from agent import reaper
from agent.reaper import ReaperHandle
from mesh.names import ENV_ACTION, ENV_AGENT
from mesh.waiting import wait_until
from tests.agent_support import exited, in_group, marked

ROOT = Path(__file__).resolve().parents[2]
TREE = "sleep 60 & sleep 60 & wait"
_tokens = itertools.count()


def new_token() -> str:
    return f"reaper-test-{os.getpid()}-{next(_tokens)}"


def spawn_tree(token: str, action_id: str, session: bool = True) -> subprocess.Popen[bytes]:
    """An action as an agent would start it: `sh` with two children, marked with the token."""
    return subprocess.Popen(["sh", "-c", TREE], start_new_session=session,
                            env={**os.environ, ENV_AGENT: token, ENV_ACTION: action_id})


def tree_pids(token: str, action_id: str, size: int = 3) -> list[int]:
    return wait_until(lambda: marked({ENV_AGENT: token, ENV_ACTION: action_id}),
                      lambda p: len(p) == size, what=f"{size} processes of {action_id}")


def gone(token: str, action_id: str) -> None:
    wait_until(lambda: marked({ENV_AGENT: token, ENV_ACTION: action_id}), lambda p: p == [],
               what=f"every process of {action_id} to die")


@pytest.fixture
def cleanup() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started; killed and waited for whatever the outcome."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                proc.kill()
        proc.wait()


def wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


def test_default_marker_variable_is_the_mesh_one() -> None:
    assert reaper.DEFAULT_VAR == ENV_AGENT


def test_protocol_lines_register_and_unregister_and_junk_is_ignored() -> None:
    groups: set[int] = set()
    for line in [b"+100", b"+200\r", b"-100", b"+1", b"+0", b"junk", b"+", b"+-5", b"*300"]:
        reaper.apply(line, groups)
    assert groups == {200}


@pytest.mark.parametrize("how", ["stdin-eof", "SIGTERM", "SIGHUP"])
def test_registered_and_marked_processes_die_when_the_reaper_is_told(
    how: str, cleanup: list[subprocess.Popen[bytes]]
) -> None:
    token = new_token()
    handle = ReaperHandle.spawn(token, ENV_AGENT)
    cleanup.append(handle.process)
    registered = spawn_tree(token, f"reg-{how}")
    # Marked but never registered: stands for a process forked before its registration.
    unregistered = spawn_tree(token, f"unreg-{how}")
    cleanup.extend([registered, unregistered])
    assert handle.register(registered.pid)
    tree_pids(token, f"reg-{how}")
    tree_pids(token, f"unreg-{how}")

    if how == "stdin-eof":
        assert handle.close() == 0
    else:
        handle.process.send_signal(signal.Signals[how])
        assert handle.process.wait(10) == 0
    gone(token, f"reg-{how}")
    gone(token, f"unreg-{how}")
    assert in_group(registered.pid) == []


def test_an_unregistered_group_of_unmarked_processes_is_spared(
    cleanup: list[subprocess.Popen[bytes]],
) -> None:
    handle = ReaperHandle.spawn(new_token(), ENV_AGENT)
    cleanup.append(handle.process)
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    cleanup.append(bystander)
    assert handle.register(bystander.pid) and handle.unregister(bystander.pid)
    assert handle.close() == 0
    assert bystander.poll() is None


def test_a_reaper_whose_parent_is_already_gone_reaps_at_once(
    cleanup: list[subprocess.Popen[bytes]],
) -> None:
    token = new_token()
    action = spawn_tree(token, "orphaned")
    cleanup.append(action)
    tree_pids(token, "orphaned")
    # --parent names a pid that is not its parent: as if the agent died during start-up.
    stray = subprocess.Popen(
        [sys.executable, "-m", "agent.reaper", token, "--parent", "1", "--var", ENV_AGENT],
        stdin=subprocess.PIPE, cwd=ROOT, start_new_session=True)
    cleanup.append(stray)
    assert stray.wait(10) == 0
    gone(token, "orphaned")


# A stand-in agent: the real Executor starts an action, then the test SIGKILLs this process.
_FAKE_AGENT = """
import asyncio, sys
from agent.executor import Executor
from agent.reaper import FLUSH_LINGER
from mesh.schema import AgentId, MeshConfig
from mesh.protocol import Assignment

class Sinks:
    def report(self, report):
        print(report.stage, flush=True)
    async def push(self, batch):
        pass
    async def close(self, action_id, attempt, total_lines):
        pass

async def main():
    token, action_id, script, work = sys.argv[1:5]
    # The running report waits twice the registration linger. The registration's flush was
    # timed first and for sooner, so by the time the agent says "running" the group is
    # registered with the reaper, as for an attempt that has run for a while: the path
    # this test is about.
    config = MeshConfig(running_report_delay=FLUSH_LINGER * 2, workspace_dir=work)
    executor = Executor(AgentId("fake"), token, config, Sinks(), Sinks())
    await executor.start(Assignment.model_validate({
        "action": {"command": [script], "shell": True},
        "action_id": action_id, "attempt": 1, "agent_id": "fake", "assigned_at": 1.0}))
    print("reaper", executor.reaper_pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_sigkill_of_the_agent_takes_its_action_tree_down(
    cleanup: list[subprocess.Popen[bytes]], tmp_path: Path,
) -> None:
    token = new_token()
    agent = subprocess.Popen([sys.executable, "-c", _FAKE_AGENT, token, "doomed", TREE,
                              str(tmp_path)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cleanup.append(agent)
    assert agent.stdout is not None and agent.stderr is not None
    reaper_pid = int(agent.stdout.readline().split()[1])
    assert agent.stdout.readline() == b"running\n"  # the group is registered by now
    pids = tree_pids(token, "doomed")
    assert all(os.getpgid(pid) != os.getpgid(agent.pid) for pid in pids)
    wait_until(lambda: wchan(reaper_pid), lambda w: "poll" in w, what="the reaper to serve")

    agent.kill()
    agent.wait()
    gone(token, "doomed")
    wait_until(lambda: exited(reaper_pid), bool, what="the reaper to exit")
    # EOF and the parent-death signal land together; either may be seen first.
    line = agent.stderr.readline().decode()
    assert re.search(r"(the agent closed its pipe|signalled); 1 groups registered", line), line


# A stand-in agent whose end of the reaper's pipe leaks into another process, so the reaper
# never sees EOF when the agent dies: the parent-death signal has to do the work.
_LEAKY_AGENT = """
import os, subprocess, sys
from agent.reaper import ReaperHandle

token, action_id, script = sys.argv[1:4]
handle = ReaperHandle.spawn(token)
leaker = subprocess.Popen(["sleep", "60"], pass_fds=[handle.process.stdin.fileno()],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
action = subprocess.Popen(["sh", "-c", script], start_new_session=True,
                          env={**os.environ, "ACTIONMESH_AGENT": token,
                               "ACTIONMESH_ACTION_ID": action_id})
handle.register(action.pid)
print(handle.pid, leaker.pid, flush=True)
sys.stdin.read()
"""


def test_the_parent_death_signal_works_when_the_pipe_stays_open(
    cleanup: list[subprocess.Popen[bytes]],
) -> None:
    token = new_token()
    agent = subprocess.Popen([sys.executable, "-c", _LEAKY_AGENT, token, "leaky", TREE],
                             cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    cleanup.append(agent)
    assert agent.stdout is not None and agent.stderr is not None
    reaper_pid, leaker_pid = map(int, agent.stdout.readline().split())
    try:
        tree_pids(token, "leaky")
        # Blocked in poll means serving, so the parent-death signal is armed.
        wait_until(lambda: wchan(reaper_pid), lambda w: "poll" in w,
                   what="the reaper to be serving")
        agent.kill()
        agent.wait()
        gone(token, "leaky")
        wait_until(lambda: exited(reaper_pid), bool, what="the reaper to exit")
        assert psutil.pid_exists(leaker_pid)  # so the pipe never reached EOF
        # The reaper writes its one line to the stderr it shares with the agent.
        assert b"signalled" in agent.stderr.readline()
    finally:
        os.kill(leaker_pid, signal.SIGKILL)


@pytest.mark.timeout(30)  # a hang fails instead of stalling the run
async def test_on_an_event_loop_short_lived_groups_never_reach_the_reaper(
    cleanup: list[subprocess.Popen[bytes]],
) -> None:
    # `cat` stands in for the reaper process: what it prints is what the reaper would read.
    stand_in = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    cleanup.append(stand_in)
    assert stand_in.stdout is not None
    received = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(received), stand_in.stdout)
    handle = ReaperHandle(stand_in)
    assert handle.register(101) and handle.unregister(101)  # both within one linger
    assert handle.register(202)
    # The linger's end is the flush that its timer makes: whatever was pending then goes
    # out together, so the first line the reaper gets shows everything that was sent.
    assert await received.readline() == b"+202\n"
    assert handle.close() == 0  # EOF: nothing more was sent
    assert await received.read() == b""


def test_a_registered_group_number_now_led_by_someone_else_is_spared(
    cleanup: list[subprocess.Popen[bytes]],
) -> None:
    # The group registered, ended, and its number now leads an unmarked group (pids wrap)
    # before the unregistration reached the reaper: stood for by registering a bystander.
    token = new_token()
    handle = ReaperHandle.spawn(token, ENV_AGENT)
    cleanup.append(handle.process)
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    ours = spawn_tree(token, "ours")
    cleanup.extend([bystander, ours])
    assert handle.register(bystander.pid) and handle.register(ours.pid)
    tree_pids(token, "ours")
    assert handle.close() == 0
    gone(token, "ours")
    assert bystander.poll() is None
