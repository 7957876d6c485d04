"""Control groups per attempt, on this machine's real cgroup file systems: what is detected,
escapees killed, memory and process limits, the reaper; and the detection logic on text."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from agent import cgroups
from agent.cgroups import Cgroups, Hierarchy
from agent.executor import Executor
from agent.reaper import ReaperHandle
from mesh.names import ENV_AGENT
from mesh.schema import ActionId, AgentId
from mesh.waiting import async_wait_until, wait_until
from tests.agent_support import (
    CONFIG,
    RecordingSinks,
    assignment,
    ended,
    executor,
    exited,
    shell,
)
from tests.conftest import IN_CI

pytestmark = pytest.mark.timeout(60)

HYBRID = """\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
33 30 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
"""
HYBRID_SELF = "4:memory:/box/1\n3:pids:/\n2:cpu:/\n0::/\n"


def test_mounts_and_own_paths_are_read_from_the_kernel_text() -> None:
    mounts = list(cgroups._mounts(HYBRID))
    assert [(v, str(p), sorted(c)) for v, p, _, c in mounts] == [
        (2, "/sys/fs/cgroup/unified", []),
        (1, "/sys/fs/cgroup/memory", ["memory"]),
        (1, "/sys/fs/cgroup/pids", ["pids"]),
    ]
    own = cgroups._own_paths(HYBRID_SELF)
    assert own["memory"] == "/box/1" and own[""] == "/" and own["pids"] == "/"
    assert cgroups._within(Path("/sys/fs/cgroup/memory"), "/", "/box/1") == \
        Path("/sys/fs/cgroup/memory/box/1")
    # A container's mount whose root is its own group: the process sits at the mount.
    assert cgroups._within(Path("/sys/fs/cgroup"), "/box/1", "/box/1") == Path("/sys/fs/cgroup")


def test_no_writable_hierarchy_means_no_cgroups(tmp_path: Path) -> None:
    # A mount point the agent cannot make its directory under (here: one that is gone).
    gone = tmp_path / "unmounted" / "memory"
    mountinfo = f"33 30 0:29 / {gone} rw - cgroup cgroup rw,memory\n"
    assert cgroups.detect("agent-x", mountinfo, "4:memory:/\n") is None
    assert cgroups.detect("agent-x", "", "") is None


def test_each_controller_comes_from_v2_where_both_offer_it(tmp_path: Path) -> None:
    v1 = Hierarchy(1, tmp_path / "v1", frozenset({"memory", "pids"}))
    v2 = Hierarchy(2, tmp_path / "v2", frozenset({"memory"}))
    found = Cgroups([v1, v2])
    assert found.memory is v2 and found.pids is v1 and found.killer is None
    assert found.describe() == "cgroup (kill: signals, memory: v2, pids: v1)"


# ---- on this machine -----------------------------------------------------------------------


# Starts a process that leaves the attempt's process group (setsid) and its environment marks
# (env -i), so only the control group still holds it; prints its pid, then waits for a file
# `go` in its workspace before it goes on.
ESCAPE = ("env -i setsid sleep 30 >/dev/null 2>&1 & echo $!; "
          "while [ ! -e go ]; do sleep 0.02; done; {then}")


async def escaped(sinks: RecordingSinks, ex: Executor) -> int:
    """The escapee's pid, once it has its own session (out of its attempt's process group)."""
    lines = await async_wait_until(lambda: sinks.lines("a1"), bool, what="the escapee's pid")
    pid = int(lines[0][2])
    await async_wait_until(lambda: os.getsid(pid), lambda sid: sid == pid,
                           what=f"process {pid} to leave its session")
    return pid


def go(ex: Executor) -> None:
    workspaces = list(ex.workspaces.root.iterdir())
    assert len(workspaces) == 1, workspaces
    (workspaces[0] / "go").touch()


def test_the_machine_offers_kill_and_limits(machine: Cgroups) -> None:
    if IN_CI:  # the build machine: cgroup2 `unified` beside v1 memory and pids
        assert machine.killer is not None and machine.memory and machine.pids, machine.describe()
    group = machine.take(memory_limit=64 << 20, pids_max=10)
    try:
        probe = subprocess.Popen(["sleep", "30"])
        group.join(probe.pid)
        for _, path in group.paths:
            assert str(probe.pid) in (path / "cgroup.procs").read_text().split()
        group.kill()
        assert probe.wait(5) == -9
    finally:
        assert group.remove(wait=2.0)
    assert all(not path.exists() for _, path in group.paths)


async def test_an_escapee_dies_when_the_attempt_ends(sinks: RecordingSinks,
                                                    machine: Cgroups) -> None:
    async with executor(sinks) as ex:
        assert ex.containment == "process group"  # not known before the first attempt
        await ex.start(shell(ESCAPE.format(then="exit 0")))
        assert ex.containment.startswith("cgroup")
        pid = await escaped(sinks, ex)
        go(ex)
        await ended(sinks)
        await async_wait_until(lambda: exited(pid), bool, timeout=5,
                               what=f"escapee {pid} to die")
        end = sinks.end("a1")
        assert end is not None and end.stage == "succeeded"


async def test_an_escapee_dies_with_a_cancel(sinks: RecordingSinks, machine: Cgroups) -> None:
    async with executor(sinks) as ex:
        await ex.start(shell(ESCAPE.format(then="sleep 30")))
        pid = await escaped(sinks, ex)
        assert await ex.cancel(ActionId("a1"), 1, "test") == "stopped"
        await async_wait_until(lambda: exited(pid), bool, timeout=5,
                               what=f"escapee {pid} to die")


async def test_ended_attempts_leave_their_groups_empty_for_the_next(
        sinks: RecordingSinks, machine: Cgroups) -> None:
    async with executor(sinks) as ex:
        for n in range(6):
            await ex.start(assignment(["true"], action_id=f"g{n}"))
            await ended(sinks, f"g{n}")
        assert ex.cgroups is not None
        bases = ex.cgroups.bases()
        kept = {p.name for b in bases for p in cgroups._children(b)}
        # One after another: one group, reused (beside the spawn server's own).
        assert kept == {"slot-1", cgroups.SPAWNER_GROUP}, kept
    assert not any(base.exists() for base in bases)  # the agent's shutdown removed them


async def test_an_emptied_workspace_serves_the_next_attempt_private_again(
        sinks: RecordingSinks, machine: Cgroups) -> None:
    where = "pwd; stat -c '%i %a' ."
    async with executor(sinks) as ex:
        await ex.start(shell(f"{where}; chmod 777 .", "w1"))
        await ended(sinks, "w1")
        await ex.start(shell(f"{where}; echo x > left", "w2"))
        await ended(sinks, "w2")
        await ex.start(shell(where, "w3"))
        await ended(sinks, "w3")
    (first, seen1), (second, seen2), (third, seen3) = (
        (Path(lines[0][2]), lines[1][2].split()) for lines in map(sinks.lines, ("w1", "w2", "w3")))
    # The same directory, renamed for its new attempt and closed up again...
    assert second.name.startswith("w2-1-") and second != first, (first, second)
    assert seen2[0] == seen1[0] and seen2[1] == "700", (seen1, seen2)
    # ...but not one left with contents: that one is removed, and the next made anew
    # (its inode number may be the removed one's again).
    assert "+" in second.name and "+" not in third.name and not second.exists(), third
    assert seen3[1] == "700"
    assert not third.exists()  # gone with the agent


async def test_without_cgroups_every_attempt_gets_a_new_workspace(
        sinks: RecordingSinks) -> None:
    # A process group cannot show that nothing of an attempt still runs in its directory.
    async with executor(sinks, CONFIG.model_copy(update={"cgroups": False})) as ex:
        for name in ("n1", "n2"):
            await ex.start(shell("pwd", name))
            await ended(sinks, name)
        first, second = (Path(sinks.lines(n)[0][2]) for n in ("n1", "n2"))
        assert not first.exists() and "+" not in second.name, (first, second)


async def test_a_reused_group_counts_only_its_own_attempts_oom_kills(
        sinks: RecordingSinks, machine: Cgroups) -> None:
    if machine.memory is None:
        pytest.skip(f"no memory controller here: {machine.describe()}")
    async with executor(sinks) as ex:
        await ex.start(shell(hog(512), "hog", memory="64M"))
        await ended(sinks, "hog")
        await ex.start(shell("exit 3", "after", memory="64M"))
        await ended(sinks, "after")
    after = sinks.end("after")
    assert after is not None and after.reason == "exited with code 3", after


def hog(mib: int) -> str:
    """A command that fills `mib` MiB of memory."""
    return f"{sys.executable} -c \"data = b'x' * ({mib} << 20); print(len(data))\""


@pytest.mark.parametrize(("headroom", "mib", "stage", "reason"), [
    (0.0, 512, "failed", "out of memory (limit 64.0MiB)"),
    (2.0, 96, "succeeded", ""),  # a 64M request with headroom 2: a 192M limit
])
async def test_the_memory_request_limits_the_attempt(
        sinks: RecordingSinks, machine: Cgroups, headroom: float, mib: int, stage: str,
        reason: str) -> None:
    if machine.memory is None:
        pytest.skip(f"no memory controller here: {machine.describe()}")
    async with executor(sinks, CONFIG.model_copy(update={"memory_headroom": headroom})) as ex:
        await ex.start(shell(hog(mib), memory="64M"))
        await ended(sinks, timeout=30)
    end = sinks.end("a1")
    assert end is not None and end.stage == stage and end.reason.startswith(reason), end


async def test_processes_past_pids_max_cannot_start(sinks: RecordingSinks,
                                                   machine: Cgroups) -> None:
    if machine.pids is None:
        pytest.skip(f"no pids controller here: {machine.describe()}")
    config = CONFIG.model_copy(update={"pids_max": 8})
    script = "n=0; for i in $(seq 30); do sleep 5 & n=$((n+1)); done; wait"
    async with executor(sinks, config) as ex:
        await ex.start(shell(script))
        await ended(sinks, timeout=30)
    errors = [text for _, stream, text in sinks.lines("a1") if stream == "stderr"]
    assert any("fork" in e.lower() or "resource" in e.lower() for e in errors), errors


async def test_without_cgroups_the_process_group_contains_attempts(
        sinks: RecordingSinks) -> None:
    config = CONFIG.model_copy(update={"cgroups": False})
    async with executor(sinks, config) as ex:
        await ex.start(assignment(["true"]))
        await ended(sinks)
        assert ex.containment == "process group" and ex.cgroups is None


async def test_a_missing_program_is_still_reported_as_not_started(
        sinks: RecordingSinks, machine: Cgroups) -> None:
    async with executor(sinks) as ex:
        await ex.start(assignment(["no-such-program-xyz"]))
        await ended(sinks)
    end = sinks.end("a1")
    assert end is not None and end.stage == "failed" and end.exit_code is None
    assert "could not start 'no-such-program-xyz'" in end.reason, end.reason


async def test_a_program_that_is_gone_is_not_started_though_it_was_found_before(
        sinks: RecordingSinks, machine: Cgroups, tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "mytool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho ran\n")
    tool.chmod(0o755)
    env = {"PATH": f"{tool.parent}:/usr/bin:/bin"}
    async with executor(sinks) as ex:
        await ex.start(assignment(["mytool"], "t1", env=env))
        await ended(sinks, "t1")
        tool.unlink()
        await ex.start(assignment(["mytool"], "t2", env=env))
        await ended(sinks, "t2")
    first, second = sinks.end("t1"), sinks.end("t2")
    assert first is not None and first.stage == "succeeded", first
    assert second is not None and second.exit_code is None
    assert "could not start 'mytool'" in second.reason, second.reason


async def test_a_new_agent_clears_groups_an_earlier_one_left(machine: Cgroups,
                                                             tmp_path: Path) -> None:
    left = machine.take(None, None)
    straggler = subprocess.Popen(["sleep", "30"])
    left.join(straggler.pid)
    sinks = RecordingSinks()
    # Another process of the same node's agent (another token).
    node = machine.used[0].base.name.removeprefix("actionmesh-").rsplit("-earlier-")[0]
    ex = Executor(AgentId(node), "later",
                  CONFIG.model_copy(update={"workspace_dir": str(tmp_path)}), sinks, sinks)
    try:
        await ex.prepare()
        assert straggler.wait(5) == -9
        assert not any(path.exists() for _, path in left.paths)
        assert ex.cgroups is not None and all(b.exists() for b in ex.cgroups.bases())
    finally:
        await ex.shutdown()


def test_the_reaper_kills_the_agents_groups_when_the_agent_dies(machine: Cgroups) -> None:
    group = machine.take(None, None)
    escapee = subprocess.Popen(["setsid", "sleep", "30"], env={"PATH": os.environ["PATH"]})
    group.join(escapee.pid)
    handle = ReaperHandle.spawn(f"reap-{uuid.uuid4().hex}", ENV_AGENT, machine.bases())
    wait_until(lambda: Path(f"/proc/{handle.pid}/wchan").read_text(), lambda w: "poll" in w,
               what="the reaper to serve")
    handle.close()  # what the kernel does for a dead agent: its end of the pipe closes
    assert escapee.wait(5) == -9
    assert group.remove(wait=2.0)


def test_groups_made_again_after_a_reaper_died_do_not_reuse_the_old_ones(
        machine: Cgroups) -> None:
    # The executor makes its groups anew when its reaper died. One that died killed did
    # not remove the old groups: names must not collide with them. One that ended on its
    # own removed them: an old group given back must not be kept for the next attempt.
    old = machine.take(None, None)
    again = cgroups.detect(machine.bases()[0].name)
    assert again is not None and again.bases() == machine.bases()
    new = again.take(None, None)
    assert [p.name for _, p in new.paths] != [p.name for _, p in old.paths]
    assert all(p.is_dir() for _, p in old.paths + new.paths)
    assert not again.give_back(old, old.empty()), "an old group is not the new ones' to keep"
    assert again.give_back(new, new.empty())
    assert again.take(None, None) is new
    old.remove(wait=1.0)


async def test_a_contained_start_leaves_one_process_the_actions(machine: Cgroups) -> None:
    # Whatever put it in its group (the spawn server, or a gate shell that then execs) is
    # not left over: the action's own process leads the attempt's process group.
    sinks = RecordingSinks()
    async with executor(sinks) as ex:
        await ex.start(shell("echo $$; sleep 30"))
        lines = await async_wait_until(lambda: sinks.lines("a1"), bool, what="the pid line")
        pid = int(lines[0][2])
        assert os.getpgid(pid) == pid
        assert ex.process_groups() == [pid]
        await ex.cancel(ActionId("a1"), 1)


async def test_groups_of_agents_that_are_gone_are_cleared_and_of_live_ones_kept(
        machine: Cgroups, tmp_path: Path) -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()  # its pid now names a process that has ended
    gone = cgroups.detect(f"actionmesh-othernode-0123456789ab-{finished.pid}")
    alive = cgroups.detect(f"actionmesh-livenode-0123456789ab-{os.getpid()}")
    assert gone is not None and alive is not None
    sinks = RecordingSinks()
    ex = Executor(AgentId(f"test-{uuid.uuid4().hex[:8]}"), "later",
                  CONFIG.model_copy(update={"workspace_dir": str(tmp_path)}), sinks, sinks)
    try:
        await ex.prepare()
        assert not any(base.exists() for base in gone.bases())
        assert all(base.exists() for base in alive.bases())
    finally:
        await ex.shutdown()
        for base in alive.bases():
            cgroups.remove(base, wait=1.0)
