"""A restarted core: saved actions taken back, then squared with what each agent says it runs."""

from __future__ import annotations

import copy

import pytest

from mesh.schema import AccountConfig, AccountId, AgentHoldings, AgentId, HeldAttempt
from mesh.stages import TERMINAL, Stage
from scheduler.core.decisions import Assign, Stop
from scheduler.core.quota.snapshot import accounts_snapshot, restore_accounts
from scheduler.core.state import SchedulerState
from tests.builders import action, agent, load, report


def running_core() -> SchedulerState:
    """Two agents of 1 CPU: a and b in flight (a running on n1, b assigned on n2), c queued,
    d succeeded."""
    core = SchedulerState()
    core.create_account(AccountId("ci"), AccountConfig(charge_rate=[0.5],
                                                       max_charge_seconds=100), 0)
    for name in ("n1", "n2"):
        core.register_agent(agent(name, cpus=1), 0)
        core.report_load(AgentId(name), load(), 0)
    core.submit(action("d"), 0)
    core.step(0)
    where = core.actions["d"].agent_id  # type: ignore[index]
    assert where is not None
    core.report_attempt(report("d", 1, where, "succeeded", exit_code=0), 1)
    for name in ("a", "b", "c"):
        core.submit(action(name, account="ci" if name == "a" else ""), 2)
    placed = {d.action_id: d.agent_id for d in core.step(2) if isinstance(d, Assign)}
    assert placed == {"a": "n1", "b": "n2"}, placed
    core.report_attempt(report("a", 1, "n1", "running"), 3)
    return core


def restarted(before: SchedulerState, now: float = 10.0) -> SchedulerState:
    """A new core from a copy of the old one's actions, as the store would hand them back."""
    after = SchedulerState()
    restore_accounts(after.quota, accounts_snapshot(before.quota))
    after.restore(copy.deepcopy(list(before.actions.values())), now)
    return after


def join(core: SchedulerState, name: str, held: AgentHoldings, now: float = 11.0,
         born: float = 0.0) -> list[Assign | Stop]:
    """The agent registers; `born`: when its process started (0.0: the one before)."""
    core.register_agent(agent(name, cpus=1).model_copy(update={"started_at": born}), now)
    core.report_load(AgentId(name), load(), now)
    return core.reconcile_agent(AgentId(name), held, now)


def test_restored_actions_keep_their_stage_and_in_flight_ones_wait_to_be_claimed() -> None:
    core = restarted(running_core())
    assert {a: e.stage for a, e in core.actions.items()} == {
        "d": Stage.SUCCEEDED, "a": Stage.RUNNING, "b": Stage.ASSIGNED, "c": Stage.QUEUED}
    assert core.unclaimed == {"a": "n1", "b": "n2"}
    assert set(core.quota.queued) == {"c"}
    core.submit(action("e"), 10)
    assert core.actions["e"].seq > max(e.seq for a, e in core.actions.items() if a != "e")  # type: ignore[index]


def test_an_agent_keeps_what_it_runs_and_is_charged_for_it() -> None:
    core = restarted(running_core())
    decisions = join(core, "n1", AgentHoldings(running=[HeldAttempt(action_id="a", attempt=1)]))
    assert decisions == []
    assert "a" not in core.unclaimed
    assert core.agents["n1"].reservations.keys() == {"a"}  # type: ignore[index]
    assert core.quota.running == {"a": "n1"}
    # Paid at priority 0 (as it was started), at 1 CPU against an income of 0.5/s.
    before = core.account(AccountId("ci")).balance[0]
    core.advance(21.0)
    assert core.account(AccountId("ci")).balance[0] == pytest.approx(before - 5.0)
    # Full with a: nothing else goes there.
    assert not [d for d in core.step(12) if isinstance(d, Assign) and d.agent_id == "n1"]
    core.report_attempt(report("a", 1, "n1", "succeeded", exit_code=0), 13)
    assert core.actions["a"].stage is Stage.SUCCEEDED  # type: ignore[index]


def test_an_assigned_attempt_its_agent_runs_is_taken_as_running() -> None:
    core = restarted(running_core())
    join(core, "n2", AgentHoldings(running=[HeldAttempt(action_id="b", attempt=1)]))
    assert core.actions["b"].stage is Stage.RUNNING  # type: ignore[index]
    assert core.actions["b"].attempts[-1].started_at == 11.0  # type: ignore[index]


def test_an_ending_missed_while_away_is_applied() -> None:
    core = restarted(running_core())
    join(core, "n1", AgentHoldings(ended=[report("a", 1, "n1", "failed", exit_code=3)]))
    a = core.actions["a"]  # type: ignore[index]
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
    assert core.unclaimed == {"a": "n1"}, "a is n1's; n2 saying it runs it changes nothing"


def test_an_attempt_its_live_agent_never_got_is_requeued_without_spending_a_retry() -> None:
    core = restarted(running_core())
    decisions = join(core, "n2", AgentHoldings())
    assert [(type(d), d.action_id, d.attempt) for d in decisions] == [(Stop, "b", 1)]
    b = core.actions["b"]  # type: ignore[index]
    assert (b.stage, b.losses, b.deaths_in_a_row) == (Stage.QUEUED, 0, [])
    assert b.attempts[-1].outcome == "lost" and "restarted" in b.attempts[-1].reason
    assert b.id in core.quota.queued
    starts = [d for d in core.step(12) if isinstance(d, Assign) and d.action_id == "b"]
    assert [d.attempt for d in starts] == [2], "the next attempt has a new number"


def test_an_agent_process_started_since_lost_its_predecessors_attempts_with_it() -> None:
    core = restarted(running_core())
    join(core, "n2", AgentHoldings(), born=5.0)  # b went to the process started at 0
    b = core.actions["b"]  # type: ignore[index]
    assert (b.stage, b.losses, b.deaths_in_a_row) == (Stage.QUEUED, 1, ["n2"])
    assert b.attempts[-1].reason == "agent n2 was lost"


def test_attempts_on_agents_gone_meanwhile_are_lost_with_them() -> None:
    core = restarted(running_core())
    core.lose_unclaimed(11, {AgentId("n1")})
    a = core.actions["a"]  # type: ignore[index]
    assert (a.stage, a.losses, a.deaths_in_a_row) == (Stage.QUEUED, 1, ["n1"])
    assert core.unclaimed == {"b": "n2"}


def test_an_ending_that_arrives_before_its_agent_registers_is_applied() -> None:
    core = restarted(running_core())
    core.report_attempt(report("a", 1, "n1", "succeeded", exit_code=0), 11)
    assert core.actions["a"].stage is Stage.SUCCEEDED  # type: ignore[index]
    assert "a" not in core.unclaimed
    # Its agent, registering later, still lists it: it is told to stop, nothing else.
    decisions = join(core, "n1", AgentHoldings(running=[HeldAttempt(action_id="a", attempt=1)]))
    assert [type(d) for d in decisions] == [Stop]
    assert core.actions["a"].stage is Stage.SUCCEEDED  # type: ignore[index]


def test_a_cancel_asked_before_the_restart_is_carried_through() -> None:
    before = running_core()
    before.cancel("a", 4)  # type: ignore[arg-type]
    core = restarted(before)
    decisions = join(core, "n1", AgentHoldings(running=[HeldAttempt(action_id="a", attempt=1)]))
    assert [(type(d), d.action_id) for d in decisions] == [(Stop, "a")]
    core.report_attempt(report("a", 1, "n1", "cancelled"), 12)
    assert core.actions["a"].stage is Stage.CANCELLED  # type: ignore[index]


def test_every_action_ends_once_across_a_restart() -> None:
    core = restarted(running_core())
    join(core, "n1", AgentHoldings(running=[HeldAttempt(action_id="a", attempt=1)]))
    join(core, "n2", AgentHoldings())
    t = 12.0
    for _ in range(20):
        for d in core.step(t):
            if isinstance(d, Assign):
                core.report_attempt(report(d.action_id, d.attempt, d.agent_id, "succeeded",
                                           exit_code=0), t + 0.5)
        for entry in list(core.by_stage[Stage.RUNNING].values()):
            assert entry.agent_id is not None
            core.report_attempt(report(entry.id, entry.attempt, entry.agent_id, "succeeded",
                                       exit_code=0), t + 0.5)
        t += 1
    assert all(e.stage in TERMINAL for e in core.actions.values())
    successes = [(a, r.number) for a, e in core.actions.items() for r in e.attempts
                 if r.outcome is Stage.SUCCEEDED]
    assert sorted(a for a, _ in successes) == ["a", "b", "c", "d"]


def test_attempt_numbers_agents_show_but_the_state_never_made_are_not_handed_out_again(
        ) -> None:
    """The head machine crashed with a step's write in its page cache: the agent runs (or
    ran) attempt 1 of c, which the saved state has never assigned."""
    core = restarted(running_core())
    decisions = join(core, "n2", AgentHoldings(
        running=[HeldAttempt(action_id="b", attempt=1), HeldAttempt(action_id="c", attempt=1)],
        ended=[report("c", 2, "n2", "succeeded", exit_code=0)]))
    assert [(d.action_id, d.attempt) for d in decisions if isinstance(d, Stop)] == [("c", 1)]
    core.report_attempt(report("b", 1, "n2", "succeeded", exit_code=0), 12)
    starts = [d for d in core.step(13) if isinstance(d, Assign) and d.action_id == "c"]
    assert [d.attempt for d in starts] == [3]
    late = core.report_attempt(report("c", 1, "n2", "running"), 14)  # stopped, not taken
    assert [(type(d), d.attempt) for d in late] == [(Stop, 1)]
    assert core.actions["c"].attempt == 3  # type: ignore[index]
