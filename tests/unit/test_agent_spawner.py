"""The spawn server, with real processes on this machine's control groups: a child born in
its groups with nothing of the server's, failures as exec reports them, and the server's
death survived."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.cgroups import AttemptGroup, Cgroups
from agent.cpushare import TICKS, AttemptCpu
from agent.spawner import Spawner
from mesh import reasons
from mesh.schema import ActionId
from mesh.waiting import async_wait_until, wait_until
from tests.agent_support import RecordingSinks, ended, executor, exited, shell

pytestmark = pytest.mark.timeout(60)

# What the child sees of itself: its pid, its session, its groups, its open descriptors and
# the signals it ignores.
PROBE = ('echo "pid $$ sid $(cut -d" " -f6 /proc/$$/stat)"; cat /proc/$$/cgroup; '
         'echo "fds $(ls /proc/$$/fd | tr "\\n" " ")"; grep SigIgn /proc/$$/status; '
         'echo "cwd $(pwd)"; echo "x=$X"; exit 3')


@pytest.fixture
async def spawner(machine: Cgroups) -> AsyncIterator[Spawner]:
    started = Spawner(machine.spawner_home)
    yield started
    started.close()


class Ran:
    """One process spawned through the server: its output and its end."""

    def __init__(self, spawner: Spawner, pid: int, out: int) -> None:
        self.pid = pid
        self.ended: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.out = os.fdopen(out, "rb")
        spawner.watch(pid, self._exited, lambda: self.ended.set_result(None))

    @classmethod
    async def start(cls, spawner: Spawner, group: AttemptGroup, argv: list[str], cwd: str,
                    env: dict[str, str]) -> Ran:
        out_r, out_w = os.pipe()
        try:
            pid = await spawner.spawn(argv[0], argv, cwd, env, group.procs_files(), out_w,
                                      out_w)
        except BaseException:
            os.close(out_r)
            raise
        finally:
            os.close(out_w)
        return cls(spawner, pid, out_r)

    def _exited(self, code: int) -> None:
        self.ended.set_result(code)

    async def output(self) -> str:
        return (await asyncio.to_thread(self.out.read)).decode()


async def test_a_child_is_born_in_its_groups_in_a_session_of_its_own(
        spawner: Spawner, machine: Cgroups, tmp_path: Path) -> None:
    group = machine.take(None, None)
    ran = await Ran.start(spawner, group, ["/bin/sh", "-c", PROBE], str(tmp_path), {"X": "y"})
    text = await ran.output()
    assert await ran.ended == 3
    lines = text.splitlines()
    assert lines[0] == f"pid {ran.pid} sid {ran.pid}", text
    # /proc/PID/cgroup names its group in each hierarchy, from the hierarchy's root.
    born = [line for line in lines
            if any(line.endswith(f"/{p.parent.name}/{p.name}") for _, p in group.paths)]
    assert len(born) == len(group.paths), text
    fds = next(line for line in lines if line.startswith("fds ")).split()[1:]
    # Nothing of the server's leaks in (3: the shell's own pipe for `$(...)`).
    assert sorted(fds) == ["0", "1", "2", "3"], text
    ignored = int(next(line for line in lines if line.startswith("SigIgn")).split()[1], 16)
    # None ignored, SIGPIPE included, which Python ignores (but glibc's own two, see
    # agent/spawnserver.py).
    assert not [s for s in signal.valid_signals() if ignored & (1 << (s - 1))], text
    assert f"cwd {tmp_path}" in lines and "x=y" in lines, text
    # The server went home: the group holds nothing once the child has gone.
    assert spawner.pid is not None and not _members(group), (spawner.pid, _members(group))
    assert group.empty()


async def test_what_exec_refuses_is_raised_as_exec_raises_it(
        spawner: Spawner, machine: Cgroups, tmp_path: Path) -> None:
    group = machine.take(None, None)
    with pytest.raises(FileNotFoundError):
        await Ran.start(spawner, group, [str(tmp_path / "nothing-here")], str(tmp_path), {})
    with pytest.raises(FileNotFoundError) as raised:
        await Ran.start(spawner, group, ["/bin/true"], str(tmp_path / "no-dir"), {})
    assert raised.value.filename == str(tmp_path / "no-dir")
    assert group.empty()
    # The server still serves.
    ran = await Ran.start(spawner, group, ["/bin/true"], str(tmp_path), {})
    assert await ran.ended == 0


async def test_children_of_a_server_that_died_are_handed_over_and_the_next_spawn_restarts_it(
        spawner: Spawner, machine: Cgroups, tmp_path: Path) -> None:
    group = machine.take(None, None)
    ran = await Ran.start(spawner, group, ["/bin/sleep", "30"], str(tmp_path), {})
    first = spawner.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert await asyncio.wait_for(ran.ended, 10) is None  # orphaned: watched from here now
    assert not exited(ran.pid)  # and it runs on
    os.killpg(ran.pid, signal.SIGKILL)
    again = await Ran.start(spawner, machine.take(None, None), ["/bin/true"], str(tmp_path),
                            {})
    assert spawner.pid not in (None, first)
    assert await again.ended == 0


async def test_a_child_whose_server_died_before_it_was_watched_is_handed_over(
        spawner: Spawner, machine: Cgroups, tmp_path: Path) -> None:
    # The answer is read, then the server's end, before the spawning coroutine (some loop
    # turns behind) gets to watch the pid: nobody would ever report its end.
    out_r, out_w = os.pipe()
    pid = await spawner.spawn("/bin/sleep", ["/bin/sleep", "30"], str(tmp_path), {},
                              machine.take(None, None).procs_files(), out_w, out_w)
    os.close(out_w)
    server = spawner.pid
    assert server is not None
    os.kill(server, signal.SIGKILL)
    await async_wait_until(lambda: spawner.pid, lambda p: p is None, timeout=10,
                           what="the server's end read")
    ran = Ran(spawner, pid, out_r)
    assert await asyncio.wait_for(ran.ended, 10) is None  # orphaned: watched from here now
    os.killpg(pid, signal.SIGKILL)


async def test_attempts_whose_spawn_server_died_still_end_and_the_next_starts(
        machine: Cgroups) -> None:
    sinks = RecordingSinks()
    async with executor(sinks) as ex:
        await ex.start(shell("echo started; sleep 30", "o1"))
        await ex.start(shell("echo started; while [ ! -e go ]; do sleep 0.02; done", "o2"))
        await async_wait_until(lambda: [sinks.lines("o1"), sinks.lines("o2")], all,
                               what="a line from each")
        server = ex.spawner_pid
        assert server is not None, "attempts here start through a spawn server"
        os.kill(server, signal.SIGKILL)
        assert await ex.cancel(ActionId("o1"), 1, "test") == "stopped"
        await ended(sinks, "o1")
        [workspace] = [w for w in ex.workspaces.root.iterdir() if w.name.startswith("o2-")]
        (workspace / "go").touch()
        await ended(sinks, "o2")
        await ex.start(shell("echo again", "o3"))
        await ended(sinks, "o3")
        assert ex.spawner_pid not in (None, server)
    cancelled, lost, again = sinks.end("o1"), sinks.end("o2"), sinks.end("o3")
    assert cancelled is not None and cancelled.stage == "cancelled", cancelled
    # Its own end, but no one kept how it went.
    assert lost is not None and (lost.stage, lost.exit_code, lost.reason) == (
        "failed", None, reasons.STATUS_LOST), lost
    assert again is not None and again.stage == "succeeded", again
    assert [line[2] for line in sinks.lines("o3")] == ["again"]


def _members(group: AttemptGroup) -> set[int]:
    return {int(p) for _, path in group.paths
            for p in (path / "cgroup.procs").read_text().split()}


async def test_an_end_read_with_a_spawns_answer_is_passed_on(
        spawner: Spawner, machine: Cgroups, tmp_path: Path) -> None:
    first = await Ran.start(spawner, machine.take(None, None), ["/bin/true"], str(tmp_path),
                            {})
    # Reaped by the server, which then sends its end; waited for without a turn of the
    # loop, so that end is still unread when the next answer comes behind it.
    wait_until(lambda: os.path.exists(f"/proc/{first.pid}"), lambda alive: not alive,
               what=f"process {first.pid} to be reaped", interval=0.001)
    # Long-lived: nothing more comes from the server that would pass a stuck end on.
    second = await Ran.start(spawner, machine.take(None, None), ["/bin/sleep", "60"],
                             str(tmp_path), {})
    assert await asyncio.wait_for(first.ended, 10) == 0
    os.killpg(second.pid, signal.SIGKILL)
    assert await asyncio.wait_for(second.ended, 10) == -signal.SIGKILL


async def test_spawns_sent_together_are_answered_each_with_its_own_pid(
        spawner: Spawner, machine: Cgroups, tmp_path: Path) -> None:
    # The loop runs on while the server spawns: several spawns may wait at once.
    scripts = [f"echo {i}" for i in range(5)]
    ran = await asyncio.gather(*(
        Ran.start(spawner, machine.take(None, None), ["/bin/sh", "-c", script],
                  str(tmp_path), {}) for script in scripts))
    assert len({r.pid for r in ran}) == len(scripts)
    assert [await r.output() for r in ran] == [f"{i}\n" for i in range(len(scripts))]
    assert [await asyncio.wait_for(r.ended, 10) for r in ran] == [0] * len(scripts)


async def test_a_spawn_whose_caller_went_away_does_not_leave_its_process_running(
        spawner: Spawner, machine: Cgroups, tmp_path: Path) -> None:
    group = machine.take(None, None)
    out_r, out_w = os.pipe()
    asking = asyncio.ensure_future(spawner.spawn(
        "/bin/sleep", ["sleep", "60"], str(tmp_path), {}, group.procs_files(), out_w, out_w))
    await asyncio.sleep(0)  # a turn of the loop: the request goes out
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    os.close(out_w)
    os.close(out_r)
    # Answers come in order: once a later spawn has its own, the first's has been taken.
    later = await Ran.start(spawner, machine.take(None, None), ["/bin/true"], str(tmp_path),
                            {})
    assert await asyncio.wait_for(later.ended, 10) == 0
    await async_wait_until(lambda: _members(group), lambda members: not members,
                           what="the unwanted process to be killed")


async def test_the_end_of_a_forgotten_process_is_not_taken_for_a_later_ones(
        spawner: Spawner, machine: Cgroups, tmp_path: Path) -> None:
    group = machine.take(None, None)
    out_r, out_w = os.pipe()
    try:
        pid = await spawner.spawn("/bin/true", ["true"], str(tmp_path), {},
                                  group.procs_files(), out_w, out_w)
    finally:
        os.close(out_w)
        os.close(out_r)
    spawner.forget(pid)  # as an abandoned start does
    wait_until(lambda: os.path.exists(f"/proc/{pid}"), lambda alive: not alive,
               what=f"process {pid} to be reaped")
    # Its start reads the forgotten end.
    later = await Ran.start(spawner, group, ["/bin/sleep", "60"], str(tmp_path), {})
    ends: list[int] = []
    spawner.watch(pid, ends.append, lambda: None)  # as if `later` had got the same pid
    assert ends == []
    os.killpg(later.pid, signal.SIGKILL)
    assert await asyncio.wait_for(later.ended, 10) == -signal.SIGKILL


async def test_the_cpu_of_an_attempt_the_server_reaped_counts_as_the_mesh_own(
        machine: Cgroups) -> None:
    # The server, not the agent, reaps the attempt: its time is in the server's cutime,
    # which the agent's load sample must count, or the mesh's own work reads as load from
    # outside it and keeps further work off the machine.
    sinks = RecordingSinks()
    async with executor(sinks) as ex:
        share = AttemptCpu(ex.process_groups, cpu_count=1, parents=ex.attempt_parents)
        start = share.seconds()
        burn = f"{sys.executable} -c 'import time\nwhile time.process_time() < 0.3: pass'"
        await ex.start(shell(burn, "b1"))
        await ended(sinks, "b1")
        assert ex.spawner_pid is not None, "attempts here start through a spawn server"
        assert not ex.process_groups()
        assert share.seconds() - start >= 0.3 - 3 / TICKS
    end = sinks.end("b1")
    assert end is not None and end.stage == "succeeded", end
