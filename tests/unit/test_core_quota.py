"""The mesh core with the quota scheduler deciding: accounts, priorities, preemption, limits."""

from __future__ import annotations

import pytest

from mesh.errors import Conflict, InvalidInput, NotFound
from mesh.schema import AccountConfig, AccountId, ActionId, Priority, QuotaOptions, RetryPolicy
from mesh.stages import Stage
from scheduler.core.decisions import Assign, Stop
from scheduler.core.quota.vector import f32
from scheduler.core.state import SchedulerState
from tests.builders import GIB, action, agent, aid, load, nid, report

A = AccountId("ci")


def core_with(cpus: float = 1, memory: int = 8 * GIB, preemption: bool = True,
              ) -> SchedulerState:
    core = SchedulerState(stale_after=1e9,
                          quota_options=QuotaOptions(disable_preemption=not preemption))
    core.agent_joined(agent("n1", cpus=cpus, memory=memory), 0)
    core.load(nid("n1"), load(0.0, available=memory), 0)
    return core


def funded(core: SchedulerState, account: AccountId = A, rate: float = 1.0,
           seconds: float = 100.0, now: float = 0.0, **fields: object) -> None:
    core.accounts.create(account, AccountConfig(charge_rate=[rate], max_charge_seconds=seconds,
                                               **fields), now)


def started(decisions: list[Assign | Stop]) -> list[tuple[ActionId, int]]:
    return [(d.action_id, d.priority) for d in decisions if isinstance(d, Assign)]


def test_an_unknown_account_is_refused_naming_the_field() -> None:
    core = core_with()
    with pytest.raises(InvalidInput, match="account") as caught:
        core.submit([action("a", account="nope")], 0)
    assert caught.value.errors == [("account", "unknown account 'nope'")]
    assert sum(core.counts().values()) == 0


def test_paid_work_goes_before_free_work_that_came_first() -> None:
    core = core_with()
    funded(core)
    core.step(10)  # the account earns 10 CPU-seconds at priority 0
    core.submit([action("free")], 10)
    core.submit([action("paid", account=A)], 11)
    assert started(core.step(12)) == [("paid", 0)]
    pending = core.get(ActionId("free"), 12).pending
    assert pending is not None and pending.priority == 5


def test_paid_work_preempts_free_work_and_the_victim_runs_again_later() -> None:
    core = core_with()
    core.submit([action("free", retry=RetryPolicy(on_lost=0))], 0)
    assert started(core.step(0)) == [("free", 5)]
    core.report(report("free", 1, "n1", "running"), 1)
    funded(core, now=1)
    core.submit([action("paid", account=A)], 5)
    decisions = core.step(5)
    why = "preempted by action paid (account ci, priority 0)"
    assert decisions == [Stop(aid("free"), 1, nid("n1"), why),
                         Assign(aid("paid"), 1, nid("n1"), 5, Priority(0))]
    victim = core.get(ActionId("free"), 5)
    assert victim.stage is Stage.QUEUED and victim.attempts[-1].outcome == "preempted"
    assert victim.attempts[-1].reason == why
    # Its attempt is still dying: a late "running" is told to stop, its end is dropped.
    assert core.report(report("free", 1, "n1", "running"), 6) == [
        Stop(aid("free"), 1, nid("n1"), "attempt 1 was already given up as lost")]
    core.report(report("free", 1, "n1", "cancelled"), 6)
    assert core.get(ActionId("free"), 6).stage is Stage.QUEUED
    core.report(report("paid", 1, "n1", "succeeded", exit_code=0), 7)
    assert started(core.step(7)) == [("free", 5)]
    # With no loss budget at all it runs again: a preemption is not a loss.
    assert core.get(aid("free"), 7).attempt == 2


def test_without_preemption_paid_work_waits_for_room() -> None:
    core = core_with(preemption=False)
    core.submit([action("free")], 0)
    core.step(0)
    funded(core)
    core.submit([action("paid", account=A)], 5)
    assert core.step(5) == []


def test_an_account_is_charged_by_cpus_and_seconds_of_what_it_runs() -> None:
    core = core_with(cpus=4)
    funded(core, rate=4.0, seconds=10.0)
    core.step(10)  # 40 CPU-seconds, the cap
    core.submit([action("two", account=A, cpus=2)], 10)
    core.step(10)
    core.step(15)
    status = core.accounts.status(A, 15)
    assert status.running == 1 and status.running_cpus == 2
    # 40 - 2 CPUs x 5 s = 30, below the cap, so it recharges 5 s x 4 = 20: 50, capped at 40.
    assert status.balance[0] == 40
    core.accounts.create(AccountId("slow"), AccountConfig(charge_rate=[1],
                                                          max_charge_seconds=100), 15)
    core.submit([action("s", account=AccountId("slow"), cpus=2)], 15)
    core.step(20)  # "slow" earned 5; "s" starts at priority 0
    core.step(30)
    # 5 - 2 x 10 = -15, + 10 = -5: a 2-CPU action costs twice a 1-CPU one.
    assert core.accounts.status(AccountId("slow"), 30).balance[0] == -5


def test_memory_granted_in_one_pass_counts_against_the_live_sample() -> None:
    core = core_with(cpus=4, memory=16 * GIB)
    core.load(nid("n1"), load(0.0, available=4 * GIB), 0)
    core.submit([action("a", memory=3 * GIB)], 0)
    core.submit([action("b", memory=3 * GIB)], 0)
    assert started(core.step(0)) == [("a", 5)]


def test_over_fanout_work_runs_free_and_says_why() -> None:
    core = core_with(cpus=1)
    funded(core, max_fanout=1)
    core.step(10)
    core.submit([action("one", account=A, labels=["os:linux"])], 10)
    assert started(core.step(10)) == [("one", 0)]
    core.submit([action("two", account=A, labels=["os:linux"])], 11)
    pending = core.get(ActionId("two"), 11).pending
    assert pending is not None and pending.priority == 5
    assert "fanout limit (1)" in pending.quota and "fanout limit" in pending.summary


def test_accounts_are_created_modified_listed_and_deleted_only_when_unused() -> None:
    core = core_with()
    funded(core)
    funded(core)  # the same create twice is one account, like a submit by id
    with pytest.raises(Conflict, match="already exists with another config"):
        funded(core, rate=3.0)
    core.step(10)
    core.accounts.modify(A, AccountConfig(charge_rate=[2], max_charge_seconds=100), 10)
    assert core.accounts.status(A, 10).balance[0] == 10, "a modify keeps the balance"
    core.accounts.modify(A, core.accounts.config(A), 10, reset_balance=True)
    assert core.accounts.status(A, 10).balance[0] == 0
    core.submit([action("x", account=A)], 10)
    with pytest.raises(Conflict, match="used by 1 unfinished action"):
        core.accounts.delete(A, 11)
    core.cancel(ActionId("x"), 11)
    core.accounts.delete(A, 12)
    assert core.accounts.all(12) == []
    with pytest.raises(NotFound):
        core.accounts.status(A, 12)


def test_an_attempt_is_charged_until_it_ends_even_between_passes() -> None:
    core = core_with()
    funded(core, rate=0.5, seconds=100)
    core.step(10)  # 5 CPU-seconds
    core.submit([action("a", account=A)], 10)
    assert started(core.step(10)) == [("a", 0)]
    core.report(report("a", 1, "n1", "succeeded", exit_code=0), 14)
    core.step(14)
    # 5 - 4 s x 1 CPU + 4 s x 0.5 = 3: the four seconds it ran are paid for.
    assert core.accounts.status(A, 14).balance[0] == 3


def test_frequent_events_still_charge_a_large_balance() -> None:
    # Millisecond steps would round a float32 balance of 1e5 unchanged; the quota clock
    # moves in ticks instead.
    core = core_with()
    funded(core, rate=1000.0, seconds=100.0)
    core.step(100)  # the cap: 1e5
    core.accounts.modify(A, AccountConfig(charge_rate=[0], max_charge_seconds=0), 100)
    core.submit([action("a", account=A, command=["sleep", "60"])], 100)
    core.step(100)
    for i in range(1, 10_001):
        core.load(nid("n1"), load(0.0), 100 + i / 1000)
    core.step(110)
    assert core.accounts.status(A, 110).balance[0] == f32(1e5 - 10)


def test_running_work_is_demoted_by_a_pass_with_nothing_queued() -> None:
    core = core_with(cpus=4)
    funded(core, rate=1.0, seconds=10)
    core.step(5)
    for i in range(4):
        core.submit([action(f"r{i}", account=A, command=["sleep", "600"])], 5)
    assert [p for _, p in started(core.step(5))] == [0, 0, 0, 0]
    # 5 at t=5, then 1 earned and 4 charged a second: -880 at t=300, below -600.
    assert core.step(300) == []  # nothing queued, but the pass still runs
    # 1 - 4 running = -3 below -600: the three cheapest move down a level.
    assert core.accounts.status(A, 300).running_by_priority == {0: 1, 1: 3}


def test_work_turned_away_by_live_memory_is_reconsidered_after_the_next_sample() -> None:
    core = core_with(cpus=8, memory=16 * GIB)
    core.load(nid("n1"), load(0.0, available=4 * GIB), 0)
    core.submit([action("a", memory=3 * GIB)], 0)
    core.submit([action("b", memory=3 * GIB)], 0)
    assert started(core.step(0)) == [("a", 5)]
    # A little more memory is free: not the 1% that counts as "grew", but b was refused.
    assert core.load(nid("n1"), load(0.0, available=4 * GIB + 2**20), 1)
    assert started(core.step(1)) == [("b", 5)]


def test_a_preemption_counts_the_victims_memory_as_freed() -> None:
    core = core_with(memory=8 * GIB)
    core.submit([action("free", memory=6 * GIB)], 0)
    core.step(0)
    core.load(nid("n1"), load(0.0, available=2 * GIB), 1)
    funded(core, now=1)
    core.submit([action("paid", account=A, memory=4 * GIB)], 2)
    assert started(core.step(2)) == [("paid", 0)]


def test_a_big_victim_leaves_room_that_waiting_work_then_uses() -> None:
    core = core_with(cpus=4)
    core.submit([action("big", cpus=4)], 0)
    core.step(0)
    core.submit([action("mid", cpus=2)], 1)
    assert core.step(1) == []  # examined, no room
    funded(core, now=2)
    core.submit([action("paid", account=A, cpus=1)], 3)
    # The 3 CPUs the 4-CPU victim leaves go to "mid" in the same pass's free level.
    assert started(core.step(3)) == [("paid", 0), ("mid", 5)]


def test_a_cancelled_attempt_that_is_preempted_ends_cancelled() -> None:
    core = core_with()
    core.submit([action("free")], 0)
    core.step(0)
    core.report(report("free", 1, "n1", "running"), 0.5)
    core.cancel(ActionId("free"), 1)  # its stop is on the way
    funded(core, now=1)
    core.submit([action("paid", account=A)], 2)
    assert started(core.step(2)) == [("paid", 0)]
    assert core.get(ActionId("free"), 2).stage is Stage.CANCELLED


def test_a_modify_changes_only_the_fields_given_and_names_a_bad_one() -> None:
    core = core_with()
    funded(core, rate=2.0, seconds=50)
    status = core.accounts.modify(A, {"max_fanout": 3}, 1)
    assert status.config.max_fanout == 3 and status.config.charge_rate == [2.0]
    with pytest.raises(InvalidInput, match="max_fanout"):
        core.accounts.modify(A, {"max_fanout": -1}, 2)
    assert core.accounts.config(A).max_fanout == 3, "a refused change changes nothing"
    assert core.accounts.set_options({"agent_expiry": 60}).agent_expiry == 60
    assert not core.accounts.options.disable_preemption, "other options keep their value"
