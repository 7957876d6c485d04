"""The pure core driven by explicit time: submission, placement, reports, loss, cancel."""

from __future__ import annotations

import pytest

from mesh.errors import InvalidInput, NotFound
from mesh.schema import ActionId, AgentId, RetryPolicy
from mesh.stages import Stage
from scheduler.core.decisions import Assign, Stop
from scheduler.core.events import ListSink
from scheduler.core.state import SchedulerState
from tests.builders import action, agent, aid, load, nid, report


def core_with(*agents: tuple[str, float, list[str]], t: float = 0.0,
              ) -> tuple[SchedulerState, ListSink]:
    sink = ListSink()
    core = SchedulerState(stale_after=3.0, sink=sink)
    for agent_id, cpus, labels in agents:
        core.agent_joined(agent(agent_id, cpus=cpus, labels=labels), t)
        core.load(nid(agent_id), load(0.0), t)
    return core, sink


def assigned(decisions: list[Assign | Stop]) -> dict[ActionId, AgentId]:
    return {d.action_id: d.agent_id for d in decisions if isinstance(d, Assign)}


def test_submitting_the_same_id_twice_gives_one_action() -> None:
    core, _ = core_with()
    [first] = core.submit([action("a")], 0)
    [again] = core.submit([action("a")], 1)
    assert first.created and not again.created and first.action_id == again.action_id
    assert core.counts()["queued"] == 1


def test_reusing_an_id_for_a_different_action_is_refused() -> None:
    core, _ = core_with()
    core.submit([action("a")], 0)
    with pytest.raises(InvalidInput, match="already used"):
        core.submit([action("a", command=["false"])], 0)


def test_actions_wait_with_no_agents_and_run_when_one_joins() -> None:
    core, _ = core_with()
    core.submit([action("a")], 0)
    assert core.step(1) == []
    assert "no agents" in (core.get(aid("a"), 1).pending or pytest.fail()).summary
    core.agent_joined(agent("n1"), 2)
    core.load(nid("n1"), load(), 2)
    assert assigned(core.step(2)) == {"a": "n1"}


def test_work_that_fits_beside_running_work_starts_when_earlier_work_does_not() -> None:
    core, _ = core_with(("n1", 2, ["os:linux"]))
    core.submit([action("big", cpus=2)], 0)
    core.submit([action("small", cpus=1)], 0)
    assert assigned(core.step(0)) == {"big": "n1"}
    core.submit([action("huge", cpus=2)], 1)
    core.submit([action("tiny", cpus=1)], 1)
    core.report(report("big", 1, "n1", "running"), 1)
    core.report(report("big", 1, "n1", "succeeded", exit_code=0), 2)
    # small was first in line; huge cannot fit beside it, tiny can.
    assert assigned(core.step(2)) == {"small": "n1", "tiny": "n1"}


def test_more_actions_than_cpus_queue_and_all_finish() -> None:
    core, _ = core_with(("n1", 2, ["os:linux"]), ("n2", 1, ["os:linux"]))
    for i in range(9):
        core.submit([action(f"a{i}")], 0)
    t = 0.0
    while core.counts()["queued"] or core.counts()["assigned"]:
        t += 1
        for agent_id in ("n1", "n2"):
            core.load(nid(agent_id), load(), t)
        placed = assigned(core.step(t))
        assert len(placed) <= 3
        for action_id, agent_id in placed.items():
            attempt = core.get(aid(action_id), t).attempt
            core.report(report(action_id, attempt, agent_id, "running"), t)
            core.report(report(action_id, attempt, agent_id, "succeeded", exit_code=0), t)
    assert core.counts()["succeeded"] == 9
    assert t == 3


def test_labels_decide_where_actions_land() -> None:
    core, _ = core_with(("x86", 4, ["os:linux", "arch:x86_64"]), ("arm", 4, ["arch:arm64"]))
    core.submit([action("a", labels=["arch:arm64"])], 0)
    core.submit([action("b", labels=["arch:x86_64"])], 0)
    assert assigned(core.step(0)) == {"a": "arm", "b": "x86"}


def test_stage_events_follow_an_attempt() -> None:
    core, sink = core_with(("n1", 1, ["os:linux"]))
    core.submit([action("a")], 0)
    core.step(0)
    core.report(report("a", 1, "n1", "running"), 1)
    core.report(report("a", 1, "n1", "failed", exit_code=3), 2)
    stages = [(e.seq, e.stage, e.attempt) for e in sink.events]
    assert stages == [(1, Stage.QUEUED, 0), (2, Stage.ASSIGNED, 1), (3, Stage.RUNNING, 1),
                      (4, Stage.FAILED, 1)]
    assert core.get(aid("a"), 2).reason == "exited with code 3"
    assert core.pool(2)[0].reserved_cpus == 0


def test_failure_is_retried_only_within_its_budget() -> None:
    core, _ = core_with(("n1", 1, ["os:linux"]))
    core.submit([action("a", retry=RetryPolicy(on_failure=1))], 0)
    for attempt in (1, 2):
        assert assigned(core.step(attempt)) == {"a": "n1"}
        core.report(report("a", attempt, "n1", "running"), attempt)
        core.report(report("a", attempt, "n1", "failed", exit_code=1), attempt)
    status = core.get(aid("a"), 3)
    assert status.stage is Stage.FAILED and status.attempt == 2


def test_losing_an_agent_requeues_its_actions_with_a_new_attempt() -> None:
    core, _ = core_with(("n1", 1, ["os:linux"]), ("n2", 1, ["os:linux"]))
    core.submit([action("a")], 0)
    assert assigned(core.step(0)) == {"a": "n1"}
    core.report(report("a", 1, "n1", "running"), 1)
    core.agent_left(nid("n1"), 2)
    status = core.get(aid("a"), 2)
    assert status.stage is Stage.QUEUED and status.attempts[0].outcome == "lost"
    assert assigned(core.step(3)) == {"a": "n2"}
    assert core.get(aid("a"), 3).attempt == 2


def test_loss_budget_ends_in_failure() -> None:
    core, _ = core_with()
    core.submit([action("a", retry=RetryPolicy(on_lost=1))], 0)
    for i in range(2):
        core.agent_joined(agent(f"n{i}"), i)
        core.load(nid(f"n{i}"), load(), i)
        core.step(i)
        core.agent_left(nid(f"n{i}"), i)
    status = core.get(aid("a"), 5)
    assert status.stage is Stage.FAILED and "lost 2 times" in status.reason


def test_agents_the_mesh_stops_itself_use_up_no_retries() -> None:
    # `mesh down` then up, more times than the loss budget and the quarantine allow.
    core, _ = core_with()
    core.submit([action("a", retry=RetryPolicy(on_lost=1, quarantine_after=2))], 0)
    for i in range(4):
        core.agent_joined(agent(f"n{i}"), i)
        core.load(nid(f"n{i}"), load(), i)
        assert assigned(core.step(i)) == {"a": f"n{i}"}
        core.agent_left(nid(f"n{i}"), i, "the mesh was shut down", counted=False)
    status = core.get(aid("a"), 5)
    assert status.stage is Stage.QUEUED and status.attempt == 4
    assert [a.outcome for a in status.attempts] == ["lost"] * 4


def test_reports_from_a_superseded_attempt_are_fenced_off() -> None:
    core, _ = core_with(("n1", 1, ["os:linux"]), ("n2", 1, ["os:linux"]))
    core.submit([action("a")], 0)
    core.step(0)
    core.agent_left(nid("n1"), 1)
    core.step(1)  # attempt 2 on n2
    stale = core.report(report("a", 1, "n1", "running"), 2)
    assert stale == [Stop(aid("a"), 1, nid("n1"), "attempt 1 was superseded by attempt 2")]
    assert core.report(report("a", 1, "n1", "succeeded", exit_code=0), 3) == []
    assert core.get(aid("a"), 3).stage is Stage.ASSIGNED


def test_cancel_a_queued_action_ends_it_at_once() -> None:
    core, _ = core_with()
    core.submit([action("a")], 0)
    assert core.cancel(aid("a"), 1) == []
    assert core.get(aid("a"), 1).stage is Stage.CANCELLED


def test_cancel_a_running_action_asks_its_agent_to_stop_it() -> None:
    core, _ = core_with(("n1", 1, ["os:linux"]))
    core.submit([action("a")], 0)
    core.step(0)
    core.report(report("a", 1, "n1", "running"), 1)
    assert core.cancel(aid("a"), 2) == [Stop(aid("a"), 1, nid("n1"), "cancelled by request")]
    core.report(report("a", 1, "n1", "cancelled"), 3)
    assert core.get(aid("a"), 3).stage is Stage.CANCELLED


def test_unknown_action_id_is_not_found() -> None:
    core, _ = core_with()
    with pytest.raises(NotFound, match="nope"):
        core.get(aid("nope"), 0)


def test_action_becomes_unplaceable_when_the_only_agent_able_to_run_it_leaves() -> None:
    core, sink = core_with(("vpn", 1, ["vpn"]), ("plain", 1, ["os:linux"]))
    core.submit([action("a", labels=["vpn"], cpus=1)], 0)
    core.submit([action("b", cpus=1)], 0)
    core.step(0)
    core.agent_left(nid("vpn"), 1)
    core.step(1)
    status = core.get(aid("a"), 1)
    assert status.stage is Stage.QUEUED
    assert status.pending is not None and status.pending.unplaceable
    assert any("unplaceable" in e.reason for e in sink.events if e.action_id == "a")


def test_an_empty_pool_takes_any_action_and_a_pool_refuses_what_it_can_never_run() -> None:
    core, _ = core_with()
    [waiting] = core.submit([action("big", cpus=999)], 0, reject_unplaceable=True)
    assert waiting.accepted
    core.agent_joined(agent("n1", cpus=2), 0)
    [refused] = core.submit([action("huge", cpus=999)], 0, reject_unplaceable=True)
    assert not refused.accepted and "999 CPUs" in refused.reason
    with pytest.raises(NotFound):
        core.get(aid("huge"), 0)


def test_an_end_report_that_overtakes_running_still_ends_the_attempt() -> None:
    core, sink = core_with(("n1", 1, ["os:linux"]))
    core.submit([action("a")], 0)
    core.step(0)
    assert core.report(report("a", 1, "n1", "succeeded", exit_code=0), 1) == []
    assert core.report(report("a", 1, "n1", "running"), 2) == []
    status = core.get(aid("a"), 2)
    assert status.stage is Stage.SUCCEEDED
    assert [e.stage for e in sink.events] == [Stage.QUEUED, Stage.ASSIGNED, Stage.RUNNING,
                                              Stage.SUCCEEDED]
    assert core.pool(2)[0].running == []


def test_a_late_running_report_of_a_retried_attempt_is_dropped_not_stopped() -> None:
    core, _ = core_with(("n1", 1, ["os:linux"]))
    core.submit([action("a", retry=RetryPolicy(on_failure=1))], 0)
    core.step(0)
    core.report(report("a", 1, "n1", "failed", exit_code=1), 1)
    core.step(2)  # attempt 2
    assert core.report(report("a", 1, "n1", "running"), 3) == []
    assert core.get(aid("a"), 3).stage is Stage.ASSIGNED


def test_a_running_report_from_a_lost_attempt_gets_a_stop() -> None:
    core, _ = core_with(("n1", 1, ["os:linux"]))
    core.submit([action("a")], 0)
    core.step(0)
    core.agent_left(nid("n1"), 1)  # lost, queued again, not placed yet
    assert core.report(report("a", 1, "n1", "running"), 2) == [
        Stop(aid("a"), 1, nid("n1"), "attempt 1 was already given up as lost")]


def test_a_cancel_that_overtook_the_start_is_repeated_when_the_attempt_runs() -> None:
    core, _ = core_with(("n1", 1, ["os:linux"]))
    core.submit([action("a")], 0)
    core.step(0)
    first = core.cancel(aid("a"), 1)
    assert first == [Stop(aid("a"), 1, nid("n1"), "cancelled by request")]
    again = core.report(report("a", 1, "n1", "running"), 2)
    assert again == first


def test_a_cancelled_attempt_its_agent_never_had_ends_cancelled_and_is_stopped_if_it_starts(
) -> None:
    core, _ = core_with(("n1", 1, ["os:linux"]))
    core.submit([action("a")], 0)
    core.submit([action("b")], 0)
    core.step(0)
    core.cancel(aid("a"), 1)
    assert not core.awaits_start(aid("a"), 1)  # never start it again
    core.stop_found_nothing(aid("a"), 1, 2)
    status = core.get(aid("a"), 2)
    assert status.stage is Stage.CANCELLED
    assert status.attempts[-1].reason == "cancelled before its agent started it"
    assert assigned(core.step(3)) == {"b": "n1"}, "the cancelled attempt kept its CPU"
    late = core.report(report("a", 1, "n1", "running"), 4)
    assert late == [Stop(aid("a"), 1, nid("n1"), "cancelled by request")]


def test_a_stop_that_found_nothing_leaves_an_uncancelled_attempt_alone() -> None:
    core, _ = core_with(("n1", 1, ["os:linux"]))
    core.submit([action("a")], 0)
    core.step(0)
    assert core.awaits_start(aid("a"), 1)
    core.stop_found_nothing(aid("a"), 1, 1)
    assert core.get(aid("a"), 1).stage is Stage.ASSIGNED


def test_only_load_samples_that_can_free_room_ask_for_placement() -> None:
    core = SchedulerState(stale_after=3.0, cpu_busy_percent=90)
    core.agent_joined(agent("n1"), 0)
    n1 = "n1"
    core.submit([action("waiting")], 0)  # (with an empty queue no sample asks for a pass)
    assert core.load(nid(n1), load(10), 0.0)  # first sample
    assert not core.load(nid(n1), load(20), 0.5)  # nothing new
    assert not core.load(nid(n1), load(95), 1.0)  # saturated
    assert core.load(nid(n1), load(50), 1.5)  # room again
    assert core.load(nid(n1), load(50), 9.0)  # stale before
    assert core.load(nid(n1), load(50, available=9 * 2**30), 9.5)
    assert not core.load(nid(n1), load(50, available=9 * 2**30 + 2**20), 10)
    assert not core.load(nid("ghost"), load(), 10)


def test_a_slot_freed_on_a_machine_busy_with_our_own_attempts_is_refilled_at_once() -> None:
    core = SchedulerState(stale_after=3.0, cpu_busy_percent=95)
    core.agent_joined(agent("n1", cpus=2), 0)
    core.load(nid("n1"), load(0), 0)
    for name in ("a", "b", "c"):
        core.submit([action(name, cpus=1)], 0)
    assert set(assigned(core.step(0))) == {"a", "b"}
    # Both CPUs busy, nearly all of it our attempts': no reason to look again.
    assert not core.load(nid("n1"), load(100, mesh=97), 0.5)
    core.report(report("a", 1, "n1", "succeeded", exit_code=0), 0.7)
    assert assigned(core.step(0.7)) == {"c": "n1"}


def test_a_machine_saturated_by_others_gets_no_cpu_work_until_they_stop() -> None:
    core = SchedulerState(stale_after=3.0, cpu_busy_percent=95)
    core.agent_joined(agent("n1", cpus=2), 0)
    core.load(nid("n1"), load(100, mesh=3), 0)
    core.submit([action("a", cpus=1)], 0)
    assert core.step(0) == []
    pending = core.get(aid("a"), 0).pending
    assert pending is not None and "1 agent is saturated by other processes (CPU 97% not " \
        "ours, limit 95%)" in pending.summary
    assert core.load(nid("n1"), load(40, mesh=0), 0.5)
    assert assigned(core.step(0.5)) == {"a": "n1"}


def _lose_on(core: SchedulerState, agent_id: str, t: float) -> None:
    core.agent_joined(agent(agent_id, cpus=1), t)
    core.load(nid(agent_id), load(0.0), t)
    assert assigned(core.step(t)) == {"poison": agent_id}
    core.agent_left(nid(agent_id), t + 0.5)


def test_an_action_lost_with_three_different_agents_in_a_row_is_quarantined() -> None:
    core, _ = core_with()
    core.submit([action("poison", retry=RetryPolicy(on_lost=10))], 0)
    _lose_on(core, "n1", 1)
    _lose_on(core, "n2", 2)
    assert core.get(aid("poison"), 3).stage is Stage.QUEUED
    _lose_on(core, "n3", 3)
    status = core.get(aid("poison"), 4)
    assert status.stage is Stage.FAILED
    assert status.reason.startswith("quarantined: lost with 3 different agents in a row "
                                    "(n1, n2, n3)")


def test_deaths_of_one_agent_or_an_attempt_that_ended_restart_the_count() -> None:
    core, _ = core_with()
    core.submit([action("poison", retry=RetryPolicy(on_lost=10, on_failure=1))], 0)
    _lose_on(core, "n1", 1)
    _lose_on(core, "n1", 2)  # the same machine again: not a walk through the fleet
    _lose_on(core, "n2", 3)
    core.agent_joined(agent("n4", cpus=1), 4)
    core.load(nid("n4"), load(0.0), 4)
    core.step(4)
    core.report(report("poison", 4, "n4", "failed", exit_code=1), 5)  # ended
    core.agent_left(nid("n4"), 5)
    _lose_on(core, "n5", 6)
    _lose_on(core, "n6", 7)
    assert core.get(aid("poison"), 8).stage is Stage.QUEUED


def test_the_first_agent_to_join_flags_what_it_could_never_run() -> None:
    core, sink = core_with()
    core.submit([action("huge", cpus=64)], 0)  # no pool yet: it waits, not unplaceable
    core.agent_joined(agent("n1", cpus=2), 1)
    assert (core.get(aid("huge"), 1).pending or pytest.fail()).unplaceable
    core.agent_joined(agent("n2", cpus=64), 2)
    assert not (core.get(aid("huge"), 2).pending or pytest.fail()).unplaceable
    assert [e.reason.split(":")[0] for e in sink.events] == ["accepted", "unplaceable"]
