"""The pure core driven by explicit time: submission, FIFO placement, reports, loss, cancel."""

from __future__ import annotations

import pytest

from mesh.errors import InvalidInput, NotFound
from mesh.schema import RetryPolicy
from mesh.stages import Stage
from scheduler.core.decisions import Assign, Stop
from scheduler.core.events import ListSink
from scheduler.core.state import SchedulerState
from tests.builders import action, agent, load, report


def core_with(*agents: tuple[str, float, list[str]], t: float = 0.0,
              ) -> tuple[SchedulerState, ListSink]:
    sink = ListSink()
    core = SchedulerState(stale_after=3.0, sink=sink)
    for agent_id, cpus, labels in agents:
        core.register_agent(agent(agent_id, cpus=cpus, labels=labels), t)
        core.report_load(agent_id, load(0.0), t)  # type: ignore[arg-type]
    return core, sink


def assigned(decisions: list[Assign | Stop]) -> dict[str, str]:
    return {d.action_id: d.agent_id for d in decisions if isinstance(d, Assign)}


def test_submitting_the_same_id_twice_gives_one_action() -> None:
    core, _ = core_with()
    first, created = core.submit(action("a"), 0)
    again, created_again = core.submit(action("a"), 1)
    assert created and not created_again and first is again
    assert len(core.actions) == 1


def test_reusing_an_id_for_a_different_action_is_refused() -> None:
    core, _ = core_with()
    core.submit(action("a"), 0)
    with pytest.raises(InvalidInput, match="already used"):
        core.submit(action("a", command=["false"]), 0)


def test_actions_wait_with_no_agents_and_run_when_one_joins() -> None:
    core, _ = core_with()
    core.submit(action("a"), 0)
    assert core.step(1) == []
    assert "no agents" in (core.get("a", 1).pending or pytest.fail()).summary  # type: ignore[arg-type]
    core.register_agent(agent("n1"), 2)
    core.report_load("n1", load(), 2)  # type: ignore[arg-type]
    assert assigned(core.step(2)) == {"a": "n1"}


def test_fifo_with_backfill_when_the_head_does_not_fit() -> None:
    core, _ = core_with(("n1", 2, ["os:linux"]))
    core.submit(action("big", cpus=2), 0)
    core.submit(action("small", cpus=1), 0)
    assert assigned(core.step(0)) == {"big": "n1"}
    core.submit(action("huge", cpus=2), 1)
    core.submit(action("tiny", cpus=1), 1)
    core.report_attempt(report("big", 1, "n1", "running"), 1)
    core.report_attempt(report("big", 1, "n1", "succeeded", exit_code=0), 2)
    # small was first in line; huge cannot fit beside it, tiny can.
    assert assigned(core.step(2)) == {"small": "n1", "tiny": "n1"}


def test_more_actions_than_cpus_queue_and_all_finish() -> None:
    core, _ = core_with(("n1", 2, ["os:linux"]), ("n2", 1, ["os:linux"]))
    for i in range(9):
        core.submit(action(f"a{i}"), 0)
    t = 0.0
    while core.by_stage[Stage.QUEUED] or core.by_stage[Stage.ASSIGNED]:
        t += 1
        for agent_id in ("n1", "n2"):
            core.report_load(agent_id, load(), t)  # type: ignore[arg-type]
        placed = assigned(core.step(t))
        assert len(placed) <= 3
        for action_id, agent_id in placed.items():
            attempt = core.actions[action_id].attempt  # type: ignore[index]
            core.report_attempt(report(action_id, attempt, agent_id, "running"), t)
            core.report_attempt(report(action_id, attempt, agent_id, "succeeded", exit_code=0), t)
    assert len(core.by_stage[Stage.SUCCEEDED]) == 9
    assert t == 3


def test_labels_decide_where_actions_land() -> None:
    core, _ = core_with(("x86", 4, ["os:linux", "arch:x86_64"]), ("arm", 4, ["arch:arm64"]))
    core.submit(action("a", labels=["arch:arm64"]), 0)
    core.submit(action("b", labels=["arch:x86_64"]), 0)
    assert assigned(core.step(0)) == {"a": "arm", "b": "x86"}


def test_stage_events_follow_an_attempt() -> None:
    core, sink = core_with(("n1", 1, ["os:linux"]))
    core.submit(action("a"), 0)
    core.step(0)
    core.report_attempt(report("a", 1, "n1", "running"), 1)
    core.report_attempt(report("a", 1, "n1", "failed", exit_code=3), 2)
    stages = [(e.seq, e.stage, e.attempt) for e in sink.events]
    assert stages == [(1, Stage.QUEUED, 0), (2, Stage.ASSIGNED, 1), (3, Stage.RUNNING, 1),
                      (4, Stage.FAILED, 1)]
    assert core.get("a", 2).reason == "exited with code 3"  # type: ignore[arg-type]
    assert core.agents["n1"].reserved_cpus == 0  # type: ignore[index]


def test_failure_is_retried_only_within_its_budget() -> None:
    core, _ = core_with(("n1", 1, ["os:linux"]))
    core.submit(action("a", retry=RetryPolicy(on_failure=1)), 0)
    for attempt in (1, 2):
        assert assigned(core.step(attempt)) == {"a": "n1"}
        core.report_attempt(report("a", attempt, "n1", "running"), attempt)
        core.report_attempt(report("a", attempt, "n1", "failed", exit_code=1), attempt)
    status = core.get("a", 3)  # type: ignore[arg-type]
    assert status.stage is Stage.FAILED and status.attempt == 2


def test_losing_an_agent_requeues_its_actions_with_a_new_attempt() -> None:
    core, _ = core_with(("n1", 1, ["os:linux"]), ("n2", 1, ["os:linux"]))
    core.submit(action("a"), 0)
    assert assigned(core.step(0)) == {"a": "n1"}
    core.report_attempt(report("a", 1, "n1", "running"), 1)
    core.remove_agent("n1", 2)  # type: ignore[arg-type]
    status = core.get("a", 2)  # type: ignore[arg-type]
    assert status.stage is Stage.QUEUED and status.attempts[0].outcome == "lost"
    assert assigned(core.step(3)) == {"a": "n2"}
    assert core.actions["a"].attempt == 2  # type: ignore[index]


def test_loss_budget_ends_in_failure() -> None:
    core, _ = core_with()
    core.submit(action("a", retry=RetryPolicy(on_lost=1)), 0)
    for i in range(2):
        core.register_agent(agent(f"n{i}"), i)
        core.report_load(f"n{i}", load(), i)  # type: ignore[arg-type]
        core.step(i)
        core.remove_agent(f"n{i}", i)  # type: ignore[arg-type]
    status = core.get("a", 5)  # type: ignore[arg-type]
    assert status.stage is Stage.FAILED and "lost 2 times" in status.reason


def test_reports_from_a_superseded_attempt_are_fenced_off() -> None:
    core, _ = core_with(("n1", 1, ["os:linux"]), ("n2", 1, ["os:linux"]))
    core.submit(action("a"), 0)
    core.step(0)
    core.remove_agent("n1", 1)  # type: ignore[arg-type]
    core.step(1)  # attempt 2 on n2
    stale = core.report_attempt(report("a", 1, "n1", "running"), 2)
    assert stale == [Stop("a", 1, "n1", "attempt 1 was superseded by attempt 2")]  # type: ignore[arg-type]
    assert core.report_attempt(report("a", 1, "n1", "succeeded", exit_code=0), 3) == []
    assert core.actions["a"].stage is Stage.ASSIGNED  # type: ignore[index]


def test_cancel_a_queued_action_ends_it_at_once() -> None:
    core, _ = core_with()
    core.submit(action("a"), 0)
    assert core.cancel("a", 1) == []  # type: ignore[arg-type]
    assert core.get("a", 1).stage is Stage.CANCELLED  # type: ignore[arg-type]


def test_cancel_a_running_action_asks_its_agent_to_stop_it() -> None:
    core, _ = core_with(("n1", 1, ["os:linux"]))
    core.submit(action("a"), 0)
    core.step(0)
    core.report_attempt(report("a", 1, "n1", "running"), 1)
    assert core.cancel("a", 2) == [Stop("a", 1, "n1", "cancelled by request")]  # type: ignore[arg-type]
    core.report_attempt(report("a", 1, "n1", "cancelled"), 3)
    assert core.get("a", 3).stage is Stage.CANCELLED  # type: ignore[arg-type]


def test_unknown_action_id_is_not_found() -> None:
    core, _ = core_with()
    with pytest.raises(NotFound, match="nope"):
        core.get("nope", 0)  # type: ignore[arg-type]


def test_action_becomes_unplaceable_when_the_only_agent_able_to_run_it_leaves() -> None:
    core, sink = core_with(("vpn", 1, ["vpn"]), ("plain", 1, ["os:linux"]))
    core.submit(action("a", labels=["vpn"], cpus=1), 0)
    core.submit(action("b", cpus=1), 0)
    core.step(0)
    core.remove_agent("vpn", 1)  # type: ignore[arg-type]
    core.step(1)
    status = core.get("a", 1)  # type: ignore[arg-type]
    assert status.stage is Stage.QUEUED
    assert status.pending is not None and status.pending.unplaceable
    assert any("unplaceable" in e.reason for e in sink.events if e.action_id == "a")


def test_unplaceable_reason_is_none_for_an_empty_pool() -> None:
    core, _ = core_with()
    assert core.unplaceable_reason(action(cpus=999), 0) is None
    core.register_agent(agent("n1", cpus=2), 0)
    reason = core.unplaceable_reason(action(cpus=999), 0)
    assert reason is not None and "999 CPUs" in reason.summary


def test_an_end_report_that_overtakes_running_still_ends_the_attempt() -> None:
    core, sink = core_with(("n1", 1, ["os:linux"]))
    core.submit(action("a"), 0)
    core.step(0)
    assert core.report_attempt(report("a", 1, "n1", "succeeded", exit_code=0), 1) == []
    assert core.report_attempt(report("a", 1, "n1", "running"), 2) == []
    status = core.get("a", 2)  # type: ignore[arg-type]
    assert status.stage is Stage.SUCCEEDED
    assert [e.stage for e in sink.events] == [Stage.QUEUED, Stage.ASSIGNED, Stage.RUNNING,
                                              Stage.SUCCEEDED]
    assert core.agents["n1"].reservations == {}  # type: ignore[index]


def test_a_late_running_report_of_a_retried_attempt_is_dropped_not_stopped() -> None:
    core, _ = core_with(("n1", 1, ["os:linux"]))
    core.submit(action("a", retry=RetryPolicy(on_failure=1)), 0)
    core.step(0)
    core.report_attempt(report("a", 1, "n1", "failed", exit_code=1), 1)
    core.step(2)  # attempt 2
    assert core.report_attempt(report("a", 1, "n1", "running"), 3) == []
    assert core.actions["a"].stage is Stage.ASSIGNED  # type: ignore[index]


def test_a_running_report_from_a_lost_attempt_gets_a_stop() -> None:
    core, _ = core_with(("n1", 1, ["os:linux"]))
    core.submit(action("a"), 0)
    core.step(0)
    core.remove_agent("n1", 1)  # type: ignore[arg-type]  # lost, queued again, not placed yet
    assert core.report_attempt(report("a", 1, "n1", "running"), 2) == [
        Stop("a", 1, "n1", "attempt 1 was already given up as lost")]  # type: ignore[arg-type]


def test_a_cancel_that_overtook_the_start_is_repeated_when_the_attempt_runs() -> None:
    core, _ = core_with(("n1", 1, ["os:linux"]))
    core.submit(action("a"), 0)
    core.step(0)
    first = core.cancel("a", 1)  # type: ignore[arg-type]
    assert first == [Stop("a", 1, "n1", "cancelled by request")]  # type: ignore[arg-type]
    again = core.report_attempt(report("a", 1, "n1", "running"), 2)
    assert again == first


def test_a_cancelled_attempt_its_agent_never_had_ends_cancelled_and_is_stopped_if_it_starts(
) -> None:
    core, _ = core_with(("n1", 1, ["os:linux"]))
    core.submit(action("a"), 0)
    core.submit(action("b"), 0)
    core.step(0)
    core.cancel("a", 1)  # type: ignore[arg-type]
    assert not core.awaits_start("a", 1)  # type: ignore[arg-type]  # never start it again
    core.stop_found_nothing("a", 1, 2)  # type: ignore[arg-type]
    status = core.get("a", 2)  # type: ignore[arg-type]
    assert status.stage is Stage.CANCELLED
    assert status.attempts[-1].reason == "cancelled before its agent started it"
    assert assigned(core.step(3)) == {"b": "n1"}, "the cancelled attempt kept its CPU"
    late = core.report_attempt(report("a", 1, "n1", "running"), 4)
    assert late == [Stop("a", 1, "n1", "cancelled by request")]  # type: ignore[arg-type]


def test_a_stop_that_found_nothing_leaves_an_uncancelled_attempt_alone() -> None:
    core, _ = core_with(("n1", 1, ["os:linux"]))
    core.submit(action("a"), 0)
    core.step(0)
    assert core.awaits_start("a", 1)  # type: ignore[arg-type]
    core.stop_found_nothing("a", 1, 1)  # type: ignore[arg-type]
    assert core.get("a", 1).stage is Stage.ASSIGNED  # type: ignore[arg-type]


def test_only_load_samples_that_can_free_room_ask_for_placement() -> None:
    core = SchedulerState(stale_after=3.0, cpu_busy_percent=90)
    core.register_agent(agent("n1"), 0)
    n1 = "n1"
    assert core.report_load(n1, load(10), 0.0)  # type: ignore[arg-type]  # first sample
    assert not core.report_load(n1, load(20), 0.5)  # type: ignore[arg-type]  # nothing new
    assert not core.report_load(n1, load(95), 1.0)  # type: ignore[arg-type]  # saturated
    assert core.report_load(n1, load(50), 1.5)  # type: ignore[arg-type]  # room again
    assert core.report_load(n1, load(50), 9.0)  # type: ignore[arg-type]  # stale before
    assert core.report_load(n1, load(50, available=9 * 2**30), 9.5)  # type: ignore[arg-type]
    assert not core.report_load(n1, load(50, available=9 * 2**30 + 2**20), 10)  # type: ignore[arg-type]
    assert not core.report_load("ghost", load(), 10)  # type: ignore[arg-type]


def test_a_slot_freed_on_a_machine_busy_with_our_own_attempts_is_refilled_at_once() -> None:
    core = SchedulerState(stale_after=3.0, cpu_busy_percent=95)
    core.register_agent(agent("n1", cpus=2), 0)
    core.report_load("n1", load(0), 0)  # type: ignore[arg-type]
    for name in ("a", "b", "c"):
        core.submit(action(name, cpus=1), 0)
    assert set(assigned(core.step(0))) == {"a", "b"}
    # Both CPUs busy, nearly all of it our attempts': no reason to look again.
    assert not core.report_load("n1", load(100, mesh=97), 0.5)  # type: ignore[arg-type]
    core.report_attempt(report("a", 1, "n1", "succeeded", exit_code=0), 0.7)
    assert assigned(core.step(0.7)) == {"c": "n1"}


def test_a_machine_saturated_by_others_gets_no_cpu_work_until_they_stop() -> None:
    core = SchedulerState(stale_after=3.0, cpu_busy_percent=95)
    core.register_agent(agent("n1", cpus=2), 0)
    core.report_load("n1", load(100, mesh=3), 0)  # type: ignore[arg-type]
    core.submit(action("a", cpus=1), 0)
    assert core.step(0) == []
    pending = core.get("a", 0).pending  # type: ignore[arg-type]
    assert pending is not None and "1 agent is saturated by other processes (CPU 97% not " \
        "ours, limit 95%)" in pending.summary
    assert core.report_load("n1", load(40, mesh=0), 0.5)  # type: ignore[arg-type]
    assert assigned(core.step(0.5)) == {"a": "n1"}


def _lose_on(core: SchedulerState, agent_id: str, t: float) -> None:
    core.register_agent(agent(agent_id, cpus=1), t)
    core.report_load(agent_id, load(0.0), t)  # type: ignore[arg-type]
    assert assigned(core.step(t)) == {"poison": agent_id}
    core.remove_agent(agent_id, t + 0.5)  # type: ignore[arg-type]


def test_an_action_lost_with_three_different_agents_in_a_row_is_quarantined() -> None:
    core, _ = core_with()
    core.submit(action("poison", retry=RetryPolicy(on_lost=10)), 0)
    _lose_on(core, "n1", 1)
    _lose_on(core, "n2", 2)
    assert core.get("poison", 3).stage is Stage.QUEUED  # type: ignore[arg-type]
    _lose_on(core, "n3", 3)
    status = core.get("poison", 4)  # type: ignore[arg-type]
    assert status.stage is Stage.FAILED
    assert status.reason.startswith("quarantined: lost with 3 different agents in a row "
                                    "(n1, n2, n3)")


def test_deaths_of_one_agent_or_an_attempt_that_ended_restart_the_count() -> None:
    core, _ = core_with()
    core.submit(action("poison", retry=RetryPolicy(on_lost=10, on_failure=1)), 0)
    _lose_on(core, "n1", 1)
    _lose_on(core, "n1", 2)  # the same machine again: not a walk through the fleet
    _lose_on(core, "n2", 3)
    core.register_agent(agent("n4", cpus=1), 4)
    core.report_load("n4", load(0.0), 4)  # type: ignore[arg-type]
    core.step(4)
    core.report_attempt(report("poison", 4, "n4", "failed", exit_code=1), 5)  # ended
    core.remove_agent("n4", 5)  # type: ignore[arg-type]
    _lose_on(core, "n5", 6)
    _lose_on(core, "n6", 7)
    assert core.get("poison", 8).stage is Stage.QUEUED  # type: ignore[arg-type]
