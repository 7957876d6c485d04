"""The backlog pass: agents whose slots turn over fast are handed work ahead of a free slot."""

from __future__ import annotations

from collections.abc import Sequence

from mesh import reasons
from mesh.protocol import AgentHoldings, HeldAttempt, ReportStage
from mesh.stages import Stage
from scheduler.core.decisions import Assign, Decision, Stop
from scheduler.core.pool import TURNOVER_SAMPLES
from scheduler.core.state import SchedulerState
from tests.builders import action, agent, aid, load, nid, report, restarted

TURNOVER = 0.25


def core_with(*agents: tuple[str, float], turnover: float = TURNOVER,
              depth: float = 1.0) -> SchedulerState:
    core = SchedulerState(stale_after=1e9, backlog_turnover=turnover, backlog_depth=depth)
    for agent_id, cpus in agents:
        join(core, agent_id, cpus)
    return core


def join(core: SchedulerState, agent_id: str, cpus: float, holds_starts: bool = True,
         t: float = 0.0) -> None:
    core.agent_joined(agent(agent_id, cpus=cpus, holds_starts=holds_starts), t)
    core.load(nid(agent_id), load(), t)


def starts(decisions: Sequence[Decision]) -> list[Assign]:
    return [d for d in decisions if isinstance(d, Assign)]


def per_agent(decisions: Sequence[Decision]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for start in starts(decisions):
        counts[start.agent_id] = counts.get(start.agent_id, 0) + 1
    return counts


def run_through(core: SchedulerState, n: int, t: float, hold: float,
                stage: ReportStage = "succeeded", exit_code: int | None = 0) -> float:
    """Run n one-CPU actions to their end, each ending `hold` seconds after its start."""
    names = [f"warm{t:g}-{i}" for i in range(n)]
    core.submit([action(name) for name in names], t)
    while any(core.get(aid(name), t).stage is Stage.QUEUED for name in names):
        for start in starts(core.step(t)):
            core.report(report(start.action_id, start.attempt, start.agent_id,
                               stage, exit_code=exit_code), t + hold)
        t += hold + 0.01
    return t


def test_an_agent_whose_slots_turn_over_fast_takes_one_more_attempt_per_cpu() -> None:
    core = core_with(("n1", 2))
    t = run_through(core, TURNOVER_SAMPLES, 0.0, hold=0.01)
    core.submit([action(f"a{i}") for i in range(5)], t)
    first = starts(core.step(t))
    assert len(first) == 4  # two to run now, two to start as those end
    assert {core.assignment(s).within_cpus for s in first} == {2.0}
    assert [core.get(aid(f"a{i}"), t).stage for i in range(5)] == [Stage.ASSIGNED] * 4 + [
        Stage.QUEUED]
    assert core.step(t) == []  # nothing more until one ends
    core.report(report("a0", 1, "n1", "succeeded", exit_code=0), t + 0.01)
    assert [s.action_id for s in starts(core.step(t + 0.01))] == ["a4"]


def test_a_deeper_backlog_holds_that_many_attempts_per_cpu() -> None:
    core = core_with(("n1", 2), depth=3)
    t = run_through(core, TURNOVER_SAMPLES, 0.0, hold=0.01)
    core.submit([action(f"a{i}") for i in range(10)], t)
    first = starts(core.step(t))
    assert len(first) == 8  # two to run now, six held: three per CPU
    assert {core.assignment(s).within_cpus for s in first} == {2.0}  # still runs two
    core.report(report("a0", 1, "n1", "succeeded", exit_code=0), t + 0.01)
    assert [s.action_id for s in starts(core.step(t + 0.01))] == ["a8"]


def test_no_backlog_until_enough_attempts_have_ended_fast() -> None:
    core = core_with(("n1", 2))
    t = run_through(core, TURNOVER_SAMPLES - 1, 0.0, hold=0.01)
    core.submit([action(f"a{i}") for i in range(3)], t)
    assert per_agent(core.step(t)) == {"n1": 2}


def test_an_agent_whose_attempts_hold_their_slot_longer_gets_no_backlog() -> None:
    core = core_with(("n1", 2))
    t = run_through(core, TURNOVER_SAMPLES, 0.0, hold=0.01)
    t = run_through(core, 1, t, hold=TURNOVER * 2)  # one slow attempt among the latest
    core.submit([action(f"a{i}") for i in range(3)], t)
    assert per_agent(core.step(t)) == {"n1": 2}


def test_a_free_slot_anywhere_comes_before_a_place_in_a_backlog() -> None:
    core = core_with(("n1", 1))
    t = run_through(core, TURNOVER_SAMPLES, 0.0, hold=0.01)
    join(core, "n2", 4)  # no history: no backlog, but free CPUs
    core.load(nid("n1"), load(), t)
    core.submit([action(f"a{i}") for i in range(3)], t)
    assert per_agent(core.step(t)) == {"n1": 1, "n2": 2}
    core.submit([action(f"b{i}") for i in range(3)], t)
    # n2's last two slots, then n1's backlog; one waits in the queue.
    assert per_agent(core.step(t)) == {"n2": 2, "n1": 1}


def test_a_turnover_of_zero_never_hands_work_ahead_nor_limits_starts() -> None:
    core = core_with(("n1", 2), turnover=0.0)
    t = run_through(core, TURNOVER_SAMPLES, 0.0, hold=0.0)
    core.submit([action(f"a{i}") for i in range(3)], t)
    first = core.step(t)
    assert per_agent(first) == {"n1": 2}
    assert {core.assignment(s).within_cpus for s in starts(first)} == {None}


def test_an_agent_that_rejoins_is_handed_work_ahead_only_once_it_turns_over_again() -> None:
    core = core_with(("n1", 2))
    t = run_through(core, TURNOVER_SAMPLES, 0.0, hold=0.01)
    core.submit([action(f"b{i}") for i in range(3)], t)
    assert per_agent(core.step(t)) == {"n1": 3}  # one of them ahead of a free slot
    core.agent_left(nid("n1"), t)  # they wait again
    join(core, "n1", 2, t=t + 1)  # a new agent process on the node: nothing known of it
    first = starts(core.step(t + 1))
    assert per_agent(first) == {"n1": 2}, "nothing ahead of a free slot yet"
    for start in first:
        core.report(report(start.action_id, start.attempt, "n1", "succeeded", exit_code=0),
                    t + 1.01)
    [waiting] = {f"b{i}" for i in range(3)} - {start.action_id for start in first}
    core.cancel(aid(waiting), t + 1.01)
    t = run_through(core, TURNOVER_SAMPLES, t + 2, hold=0.01)
    core.submit([action(f"c{i}") for i in range(5)], t)
    assert per_agent(core.step(t)) == {"n1": 4}


def test_an_agent_that_cannot_hold_starts_is_handed_nothing_ahead() -> None:
    core = SchedulerState(stale_after=1e9, backlog_turnover=TURNOVER)
    join(core, "n1", 2, holds_starts=False)  # an agent of an earlier version
    t = run_through(core, TURNOVER_SAMPLES, 0.0, hold=0.01)
    core.submit([action(f"a{i}") for i in range(3)], t)
    assert per_agent(core.step(t)) == {"n1": 2}


def test_fast_ends_of_starts_that_never_ran_do_not_count() -> None:
    core = core_with(("n1", 2))
    # E.g. an agent that cannot make workspaces fails every start at once.
    t = run_through(core, TURNOVER_SAMPLES, 0.0, hold=0.01, stage="failed", exit_code=None)
    core.submit([action(f"a{i}") for i in range(3)], t)
    assert per_agent(core.step(t)) == {"n1": 2}


def test_no_more_work_ahead_once_an_attempt_there_outlasts_the_turnover() -> None:
    core = core_with(("n1", 2))
    t = run_through(core, TURNOVER_SAMPLES, 0.0, hold=0.01)
    core.submit([action("long")], t)
    assert per_agent(core.step(t)) == {"n1": 1}
    core.report(report("long", 1, "n1", "running"), t)
    core.submit([action(f"a{i}") for i in range(4)], t)
    assert per_agent(core.step(t)) == {"n1": 3}  # a free CPU, and one more per CPU
    later = t + TURNOVER * 2
    core.report(report("a0", 1, "n1", "succeeded", exit_code=0), later)
    core.report(report("a1", 1, "n1", "running"), later)  # started in a0's slot
    # `long` has run too long: a2, still held behind it, is taken back; a3 waits.
    assert [(d.action_id, type(d)) for d in core.step(later)] == [(aid("a2"), Stop)]
    assert core.get(aid("a3"), later).stage is Stage.QUEUED


def held_long_and_short() -> tuple[SchedulerState, float]:
    """`long` runs on n1 and `short` (which may be lost no more) is held there behind it,
    and n2 joins free: at the time returned, `short` has waited past the turnover."""
    core = core_with(("n1", 1))
    t = run_through(core, TURNOVER_SAMPLES, 0.0, hold=0.01)
    core.submit([action("long"), action("short", retry={"on_lost": 0})], t)
    assert per_agent(core.step(t)) == {"n1": 2}  # `short` is held, to start as `long` ends
    core.report(report("long", 1, "n1", "running"), t + 0.01)
    assert core.step(t + TURNOVER / 2) == [], "taken back before the turnover was up"
    later = t + TURNOVER * 2
    join(core, "n2", 1, t=later)
    return core, later


def test_work_held_behind_an_attempt_that_proves_long_is_taken_back_for_a_slot_elsewhere(
) -> None:
    core, later = held_long_and_short()
    [stop] = core.step(later)
    assert isinstance(stop, Stop) and (stop.action_id, stop.attempt) == (aid("short"), 1)
    assert stop.held_only and stop.reason.startswith("taken back from agent n1")
    assert core.step(later) == [], "asked once"
    assert core.get(aid("short"), later).stage is Stage.ASSIGNED, "until the agent says"
    # The agent drops the start it held, and says so: the action waits again, at no cost.
    core.report(report("short", 1, "n1", "withdrawn", reason=stop.reason), later + 0.1)
    first = core.get(aid("short"), later + 0.1).attempts[0]
    assert (first.outcome, first.reason) == ("lost", stop.reason)
    [start] = core.step(later + 0.1)  # (a counted loss would have failed it)
    assert isinstance(start, Assign)
    assert (start.action_id, start.attempt, start.agent_id) == (aid("short"), 2, nid("n2"))
    assert core.get(aid("long"), later + 0.1).stage is Stage.RUNNING


def test_held_work_that_started_before_it_was_asked_back_runs_on_where_it_is() -> None:
    core, later = held_long_and_short()
    [stop] = core.step(later)
    assert isinstance(stop, Stop) and stop.held_only
    # `long` ended and `short` started in its slot while the stop was on its way: the
    # agent keeps it, and so does the scheduler; it runs once.
    core.report(report("long", 1, "n1", "succeeded", exit_code=0), later + 0.05)
    core.report(report("short", 1, "n1", "running"), later + 0.05)
    assert core.step(later + 0.1) == []
    core.report(report("short", 1, "n1", "succeeded", exit_code=0), later + 1)
    status = core.get(aid("short"), later + 1)
    assert status.stage is Stage.SUCCEEDED and len(status.attempts) == 1


def test_a_take_back_that_found_nothing_held_is_asked_again() -> None:
    core, later = held_long_and_short()
    [stop] = core.step(later)
    assert core.step(later) == []
    # The start had not reached the agent yet (a lost stream sends both again by Ray call,
    # in any order): it answered that it holds nothing.
    core.take_back_unanswered(aid("short"), 1)
    [again] = core.step(later + 0.1)
    assert isinstance(again, Stop) and again.held_only
    assert (again.action_id, again.attempt) == (stop.action_id, stop.attempt)


def test_cancelled_held_work_is_not_asked_back_as_well() -> None:
    core, later = held_long_and_short()
    [cancel] = core.cancel(aid("short"), later)
    assert isinstance(cancel, Stop) and not cancel.held_only
    assert core.step(later) == [], "its stop is on the way already"


def test_a_withdrawn_report_requeues_work_taken_for_running_meanwhile() -> None:
    core, later = held_long_and_short()
    [stop] = core.step(later)
    assert isinstance(stop, Stop)
    # E.g. a reconciliation saw the attempt among the agent's running ones as it was
    # being dropped: the agent's word that it never ran still counts.
    core.report(report("short", 1, "n1", "running"), later)
    core.report(report("short", 1, "n1", "withdrawn", reason=stop.reason), later + 0.1)
    status = core.get(aid("short"), later + 0.1)
    assert status.stage is Stage.QUEUED and status.attempts[0].outcome == "lost"


def test_work_held_while_the_slot_turns_over_in_time_is_left_where_it_is() -> None:
    core = core_with(("n1", 1))
    t = run_through(core, TURNOVER_SAMPLES, 0.0, hold=0.01)
    core.submit([action("a"), action("b")], t)
    assert per_agent(core.step(t)) == {"n1": 2}
    core.report(report("a", 1, "n1", "succeeded", exit_code=0), t + TURNOVER / 2)
    core.report(report("b", 1, "n1", "running"), t + TURNOVER / 2)
    assert core.step(t + TURNOVER * 4) == []
    assert core.get(aid("b"), t + TURNOVER * 4).attempt == 1


def test_room_lent_for_a_backlog_holds_nothing_larger_than_the_agent() -> None:
    core = core_with(("n1", 2))
    t = run_through(core, TURNOVER_SAMPLES, 0.0, hold=0.01)
    core.submit([action("one")], t)
    assert per_agent(core.step(t)) == {"n1": 1}
    core.submit([action("big", cpus=3)], t)  # 1 free + 2 lent, but the agent has 2
    assert core.step(t) == []
    assert core.get(aid("big"), t).stage is Stage.QUEUED


def test_a_restarted_scheduler_keeps_work_held_by_an_agent_assigned() -> None:
    core = core_with(("n1", 1))
    t = run_through(core, TURNOVER_SAMPLES, 0.0, hold=0.01)
    core.submit([action("a"), action("b")], t)
    assert per_agent(core.step(t)) == {"n1": 2}
    after = restarted(core, t + 1, backlog_turnover=TURNOVER, stale_after=1e9)
    held = AgentHoldings(running=[HeldAttempt(action_id=aid("a"), attempt=1)],
                         waiting=[HeldAttempt(action_id=aid("b"), attempt=1)])
    assert after.agent_joined(agent("n1", cpus=1, holds_starts=True), t + 1, held) == []
    assert after.get(aid("a"), t + 1).stage is Stage.RUNNING
    assert after.get(aid("b"), t + 1).stage is Stage.ASSIGNED
    after.report(report("b", 1, "n1", "succeeded", exit_code=0), t + 2)
    assert after.get(aid("b"), t + 2).stage is Stage.SUCCEEDED


def test_work_an_agent_holds_when_it_joins_a_restarted_scheduler_is_taken_back_in_time(
) -> None:
    core = core_with(("n1", 1))
    t = run_through(core, TURNOVER_SAMPLES, 0.0, hold=0.01)
    core.submit([action("a"), action("b")], t)
    assert per_agent(core.step(t)) == {"n1": 2}
    after = restarted(core, t + 1, backlog_turnover=TURNOVER, stale_after=1e9)
    join(after, "n2", 2, t=t + 1)  # another agent, and work for it: nothing held yet
    after.submit([action("c")], t + 1)
    assert per_agent(after.step(t + 1)) == {"n2": 1}
    held = AgentHoldings(running=[HeldAttempt(action_id=aid("a"), attempt=1)],
                         waiting=[HeldAttempt(action_id=aid("b"), attempt=1)])
    after.agent_joined(agent("n1", cpus=1, holds_starts=True), t + 1, held)
    after.load(nid("n1"), load(), t + 1)
    [stop] = after.step(t + 1)  # b waited a second already: asked back, then run on n2
    assert isinstance(stop, Stop) and (stop.action_id, stop.agent_id) == (aid("b"), "n1")
    assert stop.held_only
    after.report(report("b", 1, "n1", "withdrawn", reason=stop.reason), t + 1)
    [start] = after.step(t + 1)
    assert isinstance(start, Assign) and (start.action_id, start.agent_id) == (aid("b"), "n2")


def test_work_waiting_in_a_backlog_is_cancelled_as_any_assigned_work() -> None:
    core = core_with(("n1", 1))
    t = run_through(core, TURNOVER_SAMPLES, 0.0, hold=0.01)
    core.submit([action("a"), action("b")], t)
    assert per_agent(core.step(t)) == {"n1": 2}
    why = reasons.CANCELLED_BY_USER
    assert core.cancel(aid("b"), t) == [Stop(aid("b"), 1, nid("n1"), why)]
    # The agent takes it back unstarted and says so with a cancelled end.
    core.report(report("b", 1, "n1", "cancelled", reason=why), t)
    assert core.get(aid("b"), t).stage is Stage.CANCELLED
    assert core.get(aid("a"), t).stage is Stage.ASSIGNED
