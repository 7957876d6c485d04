"""Executor behaviour with real processes and in-memory sinks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from agent.executor import Executor
from agent.workspace import ENV_WORKSPACE
from mesh.names import ENV_ACTION, ENV_AGENT, ENV_ATTEMPT
from mesh.protocol import HeldAttempt
from mesh.schema import ActionId, MeshConfig
from mesh.waiting import async_wait_until
from tests.agent_support import (
    CONFIG,
    RecordingSinks,
    assignment,
    ended,
    executor,
    in_group,
    marked,
    shell,
)

TREE = "sleep 60 & sleep 60 & wait"
# A hang fails within 30 s instead of stalling the run.
pytestmark = pytest.mark.timeout(30)


def of(ex: Executor, action_id: str) -> list[int]:
    """Live processes of this executor's action."""
    return marked({ENV_AGENT: ex.token, ENV_ACTION: action_id})


async def tree_of(ex: Executor, action_id: str, size: int) -> int:
    """Wait until `size` processes of the action run; return their (common) process group."""
    pids = await async_wait_until(lambda: of(ex, action_id),
                                  lambda p: len(p) == size, what=f"{size} processes")
    groups = {os.getpgid(pid) for pid in pids}
    assert len(groups) == 1, groups
    return groups.pop()


# ---- how attempts end -------------------------------------------------------------------


async def test_exit_zero_reports_running_then_succeeded_with_clock_times(
        ex: Executor, sinks: RecordingSinks) -> None:
    await ex.start(assignment(["true"]))
    await ended(sinks)
    assert sinks.stages("a1") == ["running", "succeeded"]
    end = sinks.end("a1")
    assert end is not None and end.exit_code == 0 and end.reason == ""
    assert [r.time for r in sinks.reports] == [1000.0, 1001.0]
    assert {r.agent_id for r in sinks.reports} == {"agent-test"}


async def test_a_start_is_reported_only_if_the_attempt_outlives_the_delay() -> None:
    sinks = RecordingSinks()
    config = CONFIG.model_copy(update={"running_report_delay": 0.3})
    async with executor(sinks, config) as ex:
        await ex.start(assignment(["true"], action_id="quick"))
        await ex.start(assignment(["sleep", "0.6"], action_id="slow"))
        await ended(sinks, "quick")
        await ended(sinks, "slow")
    assert sinks.stages("quick") == ["succeeded"]
    assert sinks.stages("slow") == ["running", "succeeded"]


async def test_non_zero_exit_fails_with_its_code(ex: Executor, sinks: RecordingSinks) -> None:
    await ex.start(assignment(["sh", "-c", "exit 3"]))
    await ended(sinks)
    end = sinks.end("a1")
    assert end is not None
    assert (end.stage, end.exit_code, end.reason) == ("failed", 3, "exited with code 3")


async def test_death_by_signal_is_128_plus_n_and_names_the_signal(
        ex: Executor, sinks: RecordingSinks) -> None:
    await ex.start(shell("kill -SEGV $$"))
    await ended(sinks)
    end = sinks.end("a1")
    assert end is not None and (end.stage, end.exit_code) == ("failed", 139)
    assert "SIGSEGV" in end.reason


@pytest.mark.parametrize(
    ("command", "cwd", "reason"),
    [
        (["/nonexistent/no-such-command"], None, "could not start '/nonexistent/no-such-command'"),
        (["true"], "/nonexistent/dir", "could not enter working directory '/nonexistent/dir'"),
    ],
    ids=["no-such-command", "no-such-cwd"],
)
async def test_a_spawn_failure_fails_at_once_with_a_reason(
        ex: Executor, sinks: RecordingSinks, command: list[str], cwd: str | None,
        reason: str) -> None:
    await ex.start(assignment(command, cwd=cwd))
    assert ex.holdings().running == []
    assert sinks.stages("a1") == ["failed"]
    end = sinks.end("a1")
    assert end is not None
    assert end.reason.startswith(reason), end.reason
    assert "No such file or directory" in end.reason
    assert sinks.closed == {("a1", 1): 0}


async def test_holdings_offer_the_end_reports_the_scheduler_has_not_said_it_wrote(
        ex: Executor, sinks: RecordingSinks) -> None:
    for name in ("a1", "a2"):
        await ex.start(shell("true", name))
        await ended(sinks, name)
    ends = [sinks.end("a1"), sinks.end("a2")]
    assert None not in ends and ex.holdings().ended == ends
    first = ends[0]
    assert first is not None
    ex.recorded(first.model_copy(update={"stage": "running", "exit_code": None}))
    assert ex.holdings().ended == ends, "a written start is not its end"
    ex.recorded(first)
    assert ex.holdings().ended == [ends[1]]


async def test_an_attempt_gets_a_base_environment_and_a_private_workspace_not_the_agents(
        sinks: RecordingSinks, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_TEST_SECRET", "agent-only")
    monkeypatch.setenv("LANG", "C.UTF-8")
    config = CONFIG.model_copy(update={"workspace_dir": str(tmp_path / "work")})
    async with executor(sinks, config) as ex:
        await ex.start(shell('env; echo "cwd=$(pwd)"; echo "mode=$(stat -c %a .)"; '
                             'echo x > left-behind', "clean", env={"MINE": "1"}))
        await ended(sinks, "clean")
        assert sinks.stages("clean") == ["running", "succeeded"]
        seen = dict(t.split("=", 1) for _, _, t in sinks.lines("clean") if "=" in t)
        workspace = seen[ENV_WORKSPACE]
        assert "RAY_TEST_SECRET" not in seen and not any(n.startswith("RAY_") for n in seen)
        names = set(seen) - {"cwd", "mode", "PWD", "SHLVL", "_"}  # the last: sh's own
        assert names == {"PATH", "LANG", "HOME", "USER", "LOGNAME", "SHELL", "MINE",
                         ENV_WORKSPACE, ENV_AGENT, ENV_ACTION, ENV_ATTEMPT}
        assert seen["cwd"] == workspace and seen["mode"] == "700"
        assert Path(workspace).parent == tmp_path / "work" / "agent-test"
        # It had a file left in it: removed off the event loop, soon after the end.
        await async_wait_until(lambda: Path(workspace).exists(), lambda e: not e,
                               what="the workspace removed")


async def test_workspaces_are_kept_when_asked_and_cleared_by_the_next_agent(
        sinks: RecordingSinks, tmp_path: Path) -> None:
    kept = CONFIG.model_copy(update={"workspace_dir": str(tmp_path / "work"),
                                     "keep_workspaces": True})
    work = tmp_path / "work" / "agent-test"
    async with executor(sinks, kept) as ex:
        await ex.start(shell("echo kept > file", "debug"))
        await ended(sinks, "debug")
    [left] = list(work.iterdir())
    assert (left / "file").read_text() == "kept\n"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("mine")
    (work / "link").symlink_to(outside)  # unlinked, never followed
    async with executor(sinks, kept) as ex:
        await ex.start(shell("true", "next"))
        await ended(sinks, "next")
    assert [p.name.startswith("next-1-") for p in work.iterdir()] == [True]
    assert (outside / "precious").read_text() == "mine"


async def test_a_workspace_root_that_is_a_symlink_fails_the_attempt_with_a_reason(
        sinks: RecordingSinks, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "agent-test").symlink_to(tmp_path / "real")
    config = CONFIG.model_copy(update={"workspace_dir": str(tmp_path / "work")})
    async with executor(sinks, config) as ex:
        await ex.start(shell("true", "nowhere"))
        await ended(sinks, "nowhere")
    end = sinks.end("nowhere")
    assert end is not None and end.stage == "failed"
    assert "could not make its workspace" in end.reason and "symlink" in end.reason


async def test_shell_runs_the_script_with_sh(ex: Executor, sinks: RecordingSinks) -> None:
    await ex.start(shell("echo $((6 * 7)) && echo two"))
    await ended(sinks)
    assert [t for _, _, t in sinks.lines("a1")] == ["42", "two"]
    assert sinks.stages("a1") == ["running", "succeeded"]


async def test_env_cwd_and_marks_reach_the_process(ex: Executor, sinks: RecordingSinks,
                                                   tmp_path: Path) -> None:
    script = (f'echo "$FOO"; pwd; echo "${ENV_ACTION}" "${ENV_ATTEMPT}"; '
              f'test -n "${ENV_AGENT}" && echo marked')
    # The action's env cannot override the marks the reaper relies on.
    await ex.start(shell(script, "envtest", env={"FOO": "bar", ENV_ACTION: "spoof"},
                         cwd=str(tmp_path)))
    await ended(sinks, "envtest")
    texts = [t for _, _, t in sinks.lines("envtest")]
    assert texts == ["bar", str(tmp_path.resolve()), "envtest 1", "marked"]


# ---- stopping attempts --------------------------------------------------------------------


async def test_timeout_kills_the_whole_tree_and_reports_timed_out(
        ex: Executor, sinks: RecordingSinks) -> None:
    await ex.start(shell(TREE, "slow", timeout=1.5))
    pgid = await tree_of(ex, "slow", 3)
    await ended(sinks, "slow")
    end = sinks.end("slow")
    assert end is not None and end.stage == "timed_out"
    assert "timed out after 1.5s" in end.reason
    assert in_group(pgid) == [] and of(ex, "slow") == []


async def test_the_process_group_of_each_running_attempt_is_listed_until_it_ends(
        ex: Executor) -> None:
    assert ex.process_groups() == []
    await ex.start(shell(TREE, "one"))
    await ex.start(shell(TREE, "two"))
    groups = [await tree_of(ex, "one", 3), await tree_of(ex, "two", 3)]
    assert ex.process_groups() == groups
    await ex.cancel(ActionId("one"), 1)
    assert ex.process_groups() == groups[1:]
    await ex.start(assignment(["/nonexistent/no-such-command"], "never"))
    assert ex.process_groups() == groups[1:]  # a failed spawn has no group


async def test_cancel_kills_every_process_of_the_tree(ex: Executor, sinks: RecordingSinks) -> None:
    await ex.start(shell(TREE, "victim"))
    pgid = await tree_of(ex, "victim", 3)
    assert ex.holdings().running == [HeldAttempt(action_id=ActionId("victim"), attempt=1)]
    assert await ex.cancel(ActionId("victim"), 1) == "stopped"
    # cancel returns once the attempt is dead and reported
    assert sinks.stages("victim") == ["running", "cancelled"]
    assert in_group(pgid) == [] and of(ex, "victim") == []
    assert ex.holdings().running == []
    assert await ex.cancel(ActionId("victim"), 1) == "finished"
    assert await ex.cancel(ActionId("never"), 1) == "unknown"
    # Asked again (the first answer was lost with a stream): it still never ran here.
    assert await ex.cancel(ActionId("never"), 1) == "unknown"
    await ex.start(assignment(["true"], "never"))  # its start, late: refused, not run
    assert sinks.stages("never", 1) == []


async def test_a_stop_with_a_reason_says_so_in_the_attempts_log(
        ex: Executor, sinks: RecordingSinks) -> None:
    await ex.start(shell("echo working; sleep 60", "victim"))
    await tree_of(ex, "victim", 2)
    # Its own output first, so the stop's line is the last one whatever the load.
    await async_wait_until(lambda: sinks.lines("victim"), bool, what="its output")
    why = "preempted by action p1 (account ci, priority 0)"
    assert await ex.cancel(ActionId("victim"), 1, why) == "stopped"
    end = sinks.end("victim")
    assert end is not None and end.stage == "cancelled" and end.reason.startswith(why)
    texts = [text for _, _, text in sinks.lines("victim")]
    assert texts[-1] == f"actionmesh: stopping this attempt: {why}"


async def test_a_process_ignoring_term_is_killed_after_the_grace(
        ex: Executor, sinks: RecordingSinks) -> None:
    await ex.start(shell(f"trap '' TERM; {TREE}", "stubborn"))
    pgid = await tree_of(ex, "stubborn", 3)
    await ex.cancel(ActionId("stubborn"), 1)
    end = sinks.end("stubborn")
    assert end is not None and end.stage == "cancelled"
    assert end.exit_code == 137 and "SIGKILL" in end.reason
    assert in_group(pgid) == [] and of(ex, "stubborn") == []


async def test_processes_left_behind_by_a_finished_attempt_are_killed(
        ex: Executor, sinks: RecordingSinks) -> None:
    # The background sleep keeps stdout open: the attempt must still end promptly.
    await ex.start(shell("sleep 60 & echo done", "leaver"))
    await ended(sinks, "leaver", timeout=5.0)
    assert sinks.stages("leaver") == ["running", "succeeded"]
    assert of(ex, "leaver") == []


_ESCAPE = """
import os, signal
ready_r, ready_w = os.pipe()
if os.fork() == 0:
    os.setsid()  # out of the attempt's group, yet still holding its stdout
    os.write(ready_w, b"x")
    signal.pause()  # until the executor hunts it down
    os._exit(0)
os.read(ready_r, 1)
print("done")
"""


async def test_a_child_that_left_the_group_holding_stdout_is_hunted_down(
        ex: Executor, sinks: RecordingSinks) -> None:
    await ex.start(assignment([sys.executable, "-c", _ESCAPE], "escapee"))
    await ended(sinks, "escapee", timeout=5.0)
    assert sinks.stages("escapee") == ["running", "succeeded"]
    assert [t for _, _, t in sinks.lines("escapee")] == ["done"]
    assert of(ex, "escapee") == []


# Without control groups: a process that leaves the attempt's session and keeps writing
# to its stdout more often than the pipes' quiet period, after the main process exited.
CHATTY = ("setsid sh -c ': > left; while :; do echo tick; sleep 0.2; done' & "
          "until [ -e left ]; do sleep 0.05; done; exit 0")
NO_GROUPS = CONFIG.model_copy(update={"cgroups": False})


async def test_output_held_open_past_the_timeout_ends_the_attempt_as_timed_out(
        sinks: RecordingSinks) -> None:
    async with executor(sinks, NO_GROUPS) as ex:
        await ex.start(shell(CHATTY, "chatty", timeout=1.5))
        await ended(sinks, "chatty", timeout=10.0)
        end = sinks.end("chatty")
        assert end is not None and end.stage == "timed_out", end
        assert "exited with code 0" in end.reason
        assert of(ex, "chatty") == [], "the writer was hunted down by its marks"


async def test_a_cancel_while_the_output_is_held_open_ends_it(sinks: RecordingSinks) -> None:
    async with executor(sinks, NO_GROUPS) as ex:
        await ex.start(shell(CHATTY, "chatty"))
        await async_wait_until(lambda: sinks.lines("chatty"), lambda lines: len(lines) >= 3,
                               timeout=10, what="the writer's output")
        assert await ex.cancel(ActionId("chatty"), 1, "no longer wanted") == "stopped"
        end = sinks.end("chatty")
        assert end is not None and end.stage == "cancelled", end
        assert of(ex, "chatty") == []


async def test_a_newer_attempt_supersedes_the_older_and_repeats_are_ignored(
        ex: Executor, sinks: RecordingSinks) -> None:
    await ex.start(shell(TREE, "twice", attempt=1))
    await ex.start(shell(TREE, "twice", attempt=1))  # a repeat: ignored
    await tree_of(ex, "twice", 3)
    await ex.start(shell("exit 0", "twice", attempt=2))
    await ended(sinks, "twice", 2)
    await ended(sinks, "twice", 1)
    await ex.start(shell("exit 0", "twice", attempt=1))  # stale: ignored
    assert sinks.stages("twice", 1) == ["running", "cancelled"]
    assert sinks.stages("twice", 2) == ["running", "succeeded"]


async def test_a_late_start_of_an_attempt_it_has_forgotten_is_refused_not_run_again(
        sinks: RecordingSinks) -> None:
    # It remembers the last two attempts that ended; the fence covers the ones before.
    async with executor(sinks, remember=2) as ex:
        for n, made in enumerate([10.0, 11.0, 12.0]):
            await ex.start(assignment(["true"], f"a{n}", assigned_at=made))
            await ended(sinks, f"a{n}")
        await ex.start(assignment(["true"], "a2", assigned_at=12.0))  # remembered: ignored
        with pytest.raises(RuntimeError, match="may have run here already"):
            await ex.start(assignment(["true"], "a0", assigned_at=10.0))  # forgotten
        assert sinks.stages("a0", 1).count("succeeded") == 1, "it ran twice"
        await ex.start(assignment(["true"], "new", assigned_at=13.0))  # newer: runs
        await ended(sinks, "new")


async def test_shutdown_kills_everything_without_end_reports_and_refuses_new_work(
        ex: Executor, sinks: RecordingSinks) -> None:
    await ex.start(shell(TREE, "s1"))
    await ex.start(shell(TREE, "s2"))
    await tree_of(ex, "s1", 3)
    await tree_of(ex, "s2", 3)
    await ex.shutdown()
    assert ex.holdings().running == []
    assert of(ex, "s1") == [] and of(ex, "s2") == []
    assert sinks.stages("s1") == ["running"] and sinks.stages("s2") == ["running"]
    with pytest.raises(RuntimeError, match="shutting down"):
        await ex.start(shell("true", "s3"))


# ---- output -------------------------------------------------------------------------------

_MANY_LINES = """
import sys
n = int(sys.argv[1])
sys.stdout.write("".join(f"{i:08d} {'x' * 55}\\n" for i in range(n)))
sys.stdout.flush()
sys.stderr.write("err-1\\nerr-2\\n")
sys.stderr.flush()
sys.stdout.write("tail-without-newline")
"""


async def test_many_lines_arrive_complete_in_order_with_contiguous_offsets(
        ex: Executor, sinks: RecordingSinks) -> None:
    n = 100_000
    await ex.start(assignment([sys.executable, "-c", _MANY_LINES, str(n)], "many"))
    await ended(sinks, "many", timeout=20.0)
    lines = sinks.lines("many")
    assert [offset for offset, _, _ in lines] == list(range(n + 3))
    out = [text for _, stream, text in lines if stream == "stdout"]
    err = [text for _, stream, text in lines if stream == "stderr"]
    assert out[:n] == [f"{i:08d} {'x' * 55}" for i in range(n)]
    assert out[n:] == ["tail-without-newline"]
    assert err == ["err-1", "err-2"]
    assert sinks.closed == {("many", 1): n + 3}
    # Every batch is one stream's consecutive lines.
    assert all(len(b.lines) > 0 for b in sinks.batches)
    # The log is closed before the end report, so the result implies a complete log.
    assert sinks.events[-2:] == [("close", "many", 1, str(n + 3)),
                                 ("report", "many", 1, "succeeded")]


async def test_carriage_returns_are_stripped_and_bad_utf8_is_replaced(
        ex: Executor, sinks: RecordingSinks) -> None:
    await ex.start(shell(r"printf 'dos\r\nbad\377\nmid\rline\n'", "bytes"))
    await ended(sinks, "bytes")
    assert [t for _, _, t in sinks.lines("bytes")] == ["dos", "bad\ufffd", "mid\rline"]


async def test_a_slow_sink_applies_back_pressure_and_loses_nothing() -> None:
    n = 20_000
    config = MeshConfig(kill_grace=0.3, log_flush_interval=0.05, log_flush_bytes=1024,
                        running_report_delay=0)
    sinks = RecordingSinks(push_delay=0.002)
    async with executor(sinks, config) as ex:
        await ex.start(assignment([sys.executable, "-c", _MANY_LINES, str(n)], "slow-sink"))
        await ended(sinks, "slow-sink", timeout=20.0)
    assert [offset for offset, _, _ in sinks.lines("slow-sink")] == list(range(n + 3))
    # The cap is 8; a pipe read already under way and the flush timer may add a couple.
    assert sinks.max_in_flight <= 12, sinks.max_in_flight


async def test_a_secret_reaches_the_process_and_is_masked_in_its_output(
        ex: Executor, sinks: RecordingSinks) -> None:
    await ex.start(shell('echo "token=$DEPLOY_TOKEN"; [ "$DEPLOY_TOKEN" = s3cr3t-v4lue ] '
                         '&& echo matches >&2', secrets={"DEPLOY_TOKEN": "s3cr3t-v4lue"}))
    await ended(sinks)
    assert sorted(t for _, _, t in sinks.lines("a1")) == ["matches", "token=***"]
    assert all("s3cr3t" not in b.text for b in sinks.batches)
