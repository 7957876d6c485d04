"""A restarted core: saved actions taken back, then squared with what each agent says it runs."""

from __future__ import annotations

import pytest

from mesh.protocol import AgentHoldings, HeldAttempt
from mesh.schema import AccountConfig, AccountId, ActionStatus
from mesh.stages import TERMINAL, Stage
from scheduler.core.decisions import Assign, Decision, Stop
from scheduler.core.state import SchedulerState
from tests.builders import MemoryStore, action, agent, aid, load, nid, report, restarted


def running_core() -> SchedulerState:
    """Two agents of 1 CPU: a and b in flight (a running on n1, b assigned on n2), c queued,
    d succeeded."""
    core = SchedulerState()
    core.accounts.create(AccountId("ci"), AccountConfig(charge_rate=[0.5],
                                                        max_charge_seconds=100), 0)
    for name in ("n1", "n2"):
        core.agent_joined(agent(name, cpus=1), 0)
        core.load(nid(name), load(), 0)
    core.submit([action("d")], 0)
    [start] = core.step(0)
    core.report(report("d", 1, start.agent_id, "succeeded", exit_code=0), 1)
    for name in ("a", "b", "c"):
        core.submit([action(name, account="ci" if name == "a" else "")], 2)
    placed = {d.action_id: d.agent_id for d in core.step(2) if isinstance(d, Assign)}
    assert placed == {"a": "n1", "b": "n2"}, placed
    core.report(report("a", 1, "n1", "running"), 3)
    return core


def join(core: SchedulerState, name: str, held: AgentHoldings, now: float = 11.0,
         born: float = 0.0) -> list[Decision]:
    """The agent registers; `born`: when its process started (0.0: the one before)."""
    decisions = core.agent_joined(agent(name, cpus=1).model_copy(update={"started_at": born}),
                                  now, held)
    core.load(nid(name), load(), now)
    return decisions


def status(core: SchedulerState, name: str, now: float = 11.0) -> ActionStatus:
    return core.get(aid(name), now)


def held_on(core: SchedulerState, agent_name: str, now: float = 11.0) -> set[str]:
    """What the agent holds a place for: its claimed attempts."""
    agents = {a.info.agent_id: a for a in core.pool(now)}
    return {r.action_id for r in agents[nid(agent_name)].running}


def test_restored_actions_keep_their_stage_and_in_flight_ones_wait_to_be_claimed() -> None:
    core = restarted(running_core())
    assert {s.id: s.stage for s in core.list_actions()} == {
        "d": Stage.SUCCEEDED, "a": Stage.RUNNING, "b": Stage.ASSIGNED, "c": Stage.QUEUED}
    assert core.counts()["succeeded"] == 1, "finished work is counted, though not loaded"
    assert core.agents_wanted({nid("n1"), nid("n2")}, 10) == set(), "a and b wait for n1, n2"
    assert status(core, "c").pending is not None
    [new] = core.submit([action("e")], 10)
    assert new.created
    listed = [s.id for s in core.list_actions()]
    assert listed[-1] == "e" and sorted(listed) == ["a", "b", "c", "d", "e"], \
        "in submission order, restored, finished and new alike"


def test_an_agent_keeps_what_it_runs_and_is_charged_for_it() -> None:
    core = restarted(running_core())
    decisions = join(core, "n1", AgentHoldings(running=[HeldAttempt(action_id="a", attempt=1)]))
    assert decisions == []
    assert held_on(core, "n1") == {"a"}
    # Paid at priority 0 (as it was started), at 1 CPU against an income of 0.5/s.
    before = core.accounts.status(AccountId("ci"), 11).balance[0]
    assert core.accounts.status(AccountId("ci"), 21).balance[0] == pytest.approx(before - 5.0)
    # Full with a: nothing else goes there.
    assert not [d for d in core.step(22) if isinstance(d, Assign) and d.agent_id == "n1"]
    core.report(report("a", 1, "n1", "succeeded", exit_code=0), 23)
    assert status(core, "a", 23).stage is Stage.SUCCEEDED


def test_an_assigned_attempt_its_agent_runs_is_taken_as_running() -> None:
    core = restarted(running_core())
    join(core, "n2", AgentHoldings(running=[HeldAttempt(action_id="b", attempt=1)]))
    b = status(core, "b")
    assert b.stage is Stage.RUNNING and b.attempts[-1].started_at == 11.0


def test_an_ending_missed_while_away_is_applied() -> None:
    core = restarted(running_core())
    join(core, "n1", AgentHoldings(ended=[report("a", 1, "n1", "failed", exit_code=3)]))
    a = status(core, "a")
    assert (a.stage, a.exit_code, a.attempt) == (Stage.FAILED, 3, 1)


def test_attempts_the_state_does_not_know_are_stopped() -> None:
    core = restarted(running_core())
    held = AgentHoldings(running=[HeldAttempt(action_id="ghost", attempt=1),
                                  HeldAttempt(action_id="d", attempt=1),
                                  HeldAttempt(action_id="a", attempt=1)])
    decisions = join(core, "n2", held)
    # b is n2's but it does not run it: stopped too, in case its start is on the way.
    assert {(d.action_id, d.attempt, d.agent_id) for d in decisions if isinstance(d, Stop)} \
        == {("ghost", 1, "n2"), ("d", 1, "n2"), ("a", 1, "n2"), ("b", 1, "n2")}
    # a is n1's; n2 saying it runs it changes nothing: it still waits for n1.
    assert status(core, "a").stage is Stage.RUNNING and held_on(core, "n2") == set()
    assert core.agents_wanted({nid("n2")}, 11) == {"n1"}


def test_an_attempt_its_live_agent_never_got_is_requeued_without_spending_a_retry() -> None:
    core = restarted(running_core())
    decisions = join(core, "n2", AgentHoldings())
    assert [(type(d), d.action_id, d.attempt) for d in decisions] == [(Stop, "b", 1)]
    b = status(core, "b")
    assert b.stage is Stage.QUEUED and b.reason.startswith("requeued: the scheduler restarted")
    assert b.attempts[-1].outcome == "lost" and "restarted" in b.attempts[-1].reason
    starts = [d for d in core.step(12) if isinstance(d, Assign) and d.action_id == "b"]
    assert [d.attempt for d in starts] == [2], "the next attempt has a new number"


def test_an_agent_process_started_since_lost_its_predecessors_attempts_with_it() -> None:
    core = restarted(running_core())
    join(core, "n2", AgentHoldings(), born=5.0)  # b went to the process started at 0
    b = status(core, "b")
    assert b.stage is Stage.QUEUED and b.reason == "requeued after losing agent n2 (loss 1 of 3)"
    assert b.attempts[-1].reason == "agent n2 was lost"


def test_attempts_on_agents_gone_meanwhile_are_lost_with_them() -> None:
    core = restarted(running_core())
    assert core.agents_wanted({nid("n2")}, 11) == {"n1"}
    a = status(core, "a")
    assert a.stage is Stage.QUEUED and a.reason == "requeued after losing agent n1 (loss 1 of 3)"
    assert status(core, "b").stage is Stage.ASSIGNED, "b still waits for n2"


def test_an_ending_that_arrives_before_its_agent_registers_is_applied() -> None:
    core = restarted(running_core())
    core.report(report("a", 1, "n1", "succeeded", exit_code=0), 11)
    assert status(core, "a").stage is Stage.SUCCEEDED
    # Its agent, registering later, still lists it: it is told to stop, nothing else.
    decisions = join(core, "n1", AgentHoldings(running=[HeldAttempt(action_id="a", attempt=1)]))
    assert [type(d) for d in decisions] == [Stop]
    assert status(core, "a").stage is Stage.SUCCEEDED and held_on(core, "n1") == set()


def test_a_cancel_asked_before_the_restart_is_carried_through() -> None:
    before = running_core()
    before.cancel(aid("a"), 4)
    core = restarted(before)
    decisions = join(core, "n1", AgentHoldings(running=[HeldAttempt(action_id="a", attempt=1)]))
    assert [(type(d), d.action_id) for d in decisions] == [(Stop, "a")]
    core.report(report("a", 1, "n1", "cancelled"), 12)
    assert status(core, "a", 12).stage is Stage.CANCELLED


def test_every_action_ends_once_across_a_restart() -> None:
    core = restarted(running_core())
    join(core, "n1", AgentHoldings(running=[HeldAttempt(action_id="a", attempt=1)]))
    join(core, "n2", AgentHoldings())
    t = 12.0
    for _ in range(20):
        for d in core.step(t):
            if isinstance(d, Assign):
                core.report(report(d.action_id, d.attempt, d.agent_id, "succeeded",
                                   exit_code=0), t + 0.5)
        for running in core.list_actions(Stage.RUNNING):
            assert running.agent_id is not None
            core.report(report(running.id, running.attempt, running.agent_id, "succeeded",
                               exit_code=0), t + 0.5)
        t += 1
    everything = core.list_actions()
    assert all(s.stage in TERMINAL for s in everything)
    successes = [s.id for s in everything for r in s.attempts if r.outcome is Stage.SUCCEEDED]
    assert sorted(successes) == ["a", "b", "c", "d"]


def test_attempt_numbers_agents_show_but_the_state_never_made_are_not_handed_out_again(
        ) -> None:
    """The head machine crashed with a step's write in its page cache: the agent runs (or
    ran) attempt 1 of c, which the saved state has never assigned."""
    core = restarted(running_core())
    decisions = join(core, "n2", AgentHoldings(
        running=[HeldAttempt(action_id="b", attempt=1), HeldAttempt(action_id="c", attempt=1)],
        ended=[report("c", 2, "n2", "succeeded", exit_code=0)]))
    assert [(d.action_id, d.attempt) for d in decisions if isinstance(d, Stop)] == [("c", 1)]
    core.report(report("b", 1, "n2", "succeeded", exit_code=0), 12)
    starts = [d for d in core.step(13) if isinstance(d, Assign) and d.action_id == "c"]
    assert [d.attempt for d in starts] == [3]
    late = core.report(report("c", 1, "n2", "running"), 14)  # stopped, not taken
    assert [(type(d), d.attempt) for d in late] == [(Stop, 1)]
    assert status(core, "c", 14).attempt == 3


def test_the_attempt_floor_survives_a_second_restart() -> None:
    store = MemoryStore()
    core = restarted(running_core(), store=store)
    join(core, "n2", AgentHoldings(ended=[report("c", 2, "n2", "succeeded", exit_code=0)]))
    again = restarted(core, now=20, store=store)
    join(again, "n1", AgentHoldings(ended=[report("a", 1, "n1", "succeeded", exit_code=0)]),
         now=21)
    join(again, "n2", AgentHoldings(), now=21)
    starts = {d.action_id: d.attempt for d in again.step(22) if isinstance(d, Assign)}
    assert starts == {"b": 2, "c": 3}


def test_restored_work_is_listed_in_submission_order_however_the_store_reads_it() -> None:
    core = SchedulerState()
    names = ["q5", "q1", "q4", "q2", "q3"]  # ids out of order, so an id sort shows too
    for t, name in enumerate(names):
        core.submit([action(name)], t)
    # The store reads unfinished actions in no order (the test store: newest first).
    after = restarted(core)
    assert [s.id for s in after.list_actions()] == names
