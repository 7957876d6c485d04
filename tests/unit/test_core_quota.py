"""The mesh core with the quota scheduler deciding: accounts, priorities, preemption, limits."""

from __future__ import annotations

import pytest

from mesh.errors import Conflict, InvalidInput, NotFound
from mesh.schema import AccountConfig, AccountId, ActionId, QuotaOptions
from mesh.stages import Stage
from scheduler.core.decisions import Assign, Stop
from scheduler.core.quota.vector import f32, vector
from scheduler.core.state import SchedulerState
from tests.builders import GIB, action, agent, load, report

A = AccountId("ci")


def core_with(cpus: float = 1, memory: int = 8 * GIB, preemption: bool = True,
              ) -> SchedulerState:
    core = SchedulerState(stale_after=1e9,
                          quota_options=QuotaOptions(disable_preemption=not preemption))
    core.register_agent(agent("n1", cpus=cpus, memory=memory), 0)
    core.report_load("n1", load(0.0, available=memory), 0)  # type: ignore[arg-type]
    return core


def funded(core: SchedulerState, account: AccountId = A, rate: float = 1.0,
           seconds: float = 100.0, now: float = 0.0, **fields: object) -> None:
    core.create_account(account, AccountConfig(charge_rate=[rate], max_charge_seconds=seconds,
                                               **fields), now)  # type: ignore[arg-type]


def started(decisions: list[Assign | Stop]) -> list[tuple[str, int]]:
    return [(d.action_id, d.priority) for d in decisions if isinstance(d, Assign)]


def test_an_unknown_account_is_refused_naming_the_field() -> None:
    core = core_with()
    with pytest.raises(InvalidInput, match="account") as caught:
        core.submit(action("a", account="nope"), 0)
    assert caught.value.errors == [("account", "unknown account 'nope'")]
    assert core.actions == {}


def test_paid_work_goes_before_free_work_that_came_first() -> None:
    core = core_with()
    funded(core)
    core.step(10)  # the account earns 10 CPU-seconds at priority 0
    core.submit(action("free"), 10)
    core.submit(action("paid", account=A), 11)
    assert started(core.step(12)) == [("paid", 0)]
    assert core.get(ActionId("free"), 12).pending.priority == 5  # type: ignore[union-attr]


def test_paid_work_preempts_free_work_and_the_victim_runs_again_later() -> None:
    core = core_with()
    core.submit(action("free"), 0)
    assert started(core.step(0)) == [("free", 5)]
    core.report_attempt(report("free", 1, "n1", "running"), 1)
    funded(core, now=1)
    core.submit(action("paid", account=A), 5)
    decisions = core.step(5)
    why = "preempted by action paid (account ci, priority 0)"
    assert decisions == [Stop(ActionId("free"), 1, "n1", why),  # type: ignore[arg-type]
                         Assign(ActionId("paid"), 1, "n1", 5, 0)]  # type: ignore[arg-type]
    victim = core.get(ActionId("free"), 5)
    assert victim.stage is Stage.QUEUED and victim.attempts[-1].outcome == "preempted"
    assert victim.attempts[-1].reason == why
    # Its attempt is still dying: a late "running" is told to stop, its end is dropped.
    assert core.report_attempt(report("free", 1, "n1", "running"), 6) == [
        Stop(ActionId("free"), 1, "n1", "attempt 1 was already given up as lost")]  # type: ignore[arg-type]
    core.report_attempt(report("free", 1, "n1", "cancelled"), 6)
    assert core.get(ActionId("free"), 6).stage is Stage.QUEUED
    core.report_attempt(report("paid", 1, "n1", "succeeded", exit_code=0), 7)
    assert started(core.step(7)) == [("free", 5)]
    assert core.actions[ActionId("free")].attempt == 2
    assert core.actions[ActionId("free")].losses == 0, "a preemption is not a loss"


def test_without_preemption_paid_work_waits_for_room() -> None:
    core = core_with(preemption=False)
    core.submit(action("free"), 0)
    core.step(0)
    funded(core)
    core.submit(action("paid", account=A), 5)
    assert core.step(5) == []


def test_an_account_is_charged_by_cpus_and_seconds_of_what_it_runs() -> None:
    core = core_with(cpus=4)
    funded(core, rate=4.0, seconds=10.0)
    core.step(10)  # 40 CPU-seconds, the cap
    core.submit(action("two", account=A, cpus=2), 10)
    core.step(10)
    core.step(15)
    status = core.account(A)
    assert status.running == 1 and status.running_cpus == 2
    # 40 - 2 CPUs x 5 s = 30, below the cap, so it recharges 5 s x 4 = 20: 50, capped at 40.
    assert status.balance[0] == 40
    core.create_account(AccountId("slow"), AccountConfig(charge_rate=[1], max_charge_seconds=100),
                        15)
    core.submit(action("s", account=AccountId("slow"), cpus=2), 15)
    core.step(20)  # "slow" earned 5; "s" starts at priority 0
    core.step(30)
    # 5 - 2 x 10 = -15, + 10 = -5: a 2-CPU action costs twice a 1-CPU one.
    assert core.account(AccountId("slow")).balance[0] == -5


def test_memory_granted_in_one_pass_counts_against_the_live_sample() -> None:
    core = core_with(cpus=4, memory=16 * GIB)
    core.report_load("n1", load(0.0, available=4 * GIB), 0)  # type: ignore[arg-type]
    core.submit(action("a", memory=3 * GIB), 0)
    core.submit(action("b", memory=3 * GIB), 0)
    assert started(core.step(0)) == [("a", 5)]


def test_over_fanout_work_runs_free_and_says_why() -> None:
    core = core_with(cpus=1)
    funded(core, max_fanout=1)
    core.step(10)
    core.submit(action("one", account=A, labels=["os:linux"]), 10)
    assert started(core.step(10)) == [("one", 0)]
    core.submit(action("two", account=A, labels=["os:linux"]), 11)
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
    core.modify_account(A, AccountConfig(charge_rate=[2], max_charge_seconds=100), 10)
    assert core.account(A).balance[0] == 10, "a modify keeps the balance"
    core.modify_account(A, core.account_config(A), 10, reset_balance=True)
    assert core.account(A).balance[0] == 0
    core.submit(action("x", account=A), 10)
    with pytest.raises(Conflict, match="used by 1 unfinished action"):
        core.delete_account(A, 11)
    core.cancel(ActionId("x"), 11)
    core.delete_account(A, 12)
    assert core.accounts() == []
    with pytest.raises(NotFound):
        core.account(A)


def test_an_attempt_is_charged_until_it_ends_even_between_passes() -> None:
    core = core_with()
    funded(core, rate=0.5, seconds=100)
    core.step(10)  # 5 CPU-seconds
    core.submit(action("a", account=A), 10)
    assert started(core.step(10)) == [("a", 0)]
    core.report_attempt(report("a", 1, "n1", "succeeded", exit_code=0), 14)
    core.step(14)
    # 5 - 4 s x 1 CPU + 4 s x 0.5 = 3: the four seconds it ran are paid for.
    assert core.account(A).balance[0] == 3


def test_frequent_events_still_charge_a_large_balance() -> None:
    # Millisecond steps would round a float32 balance of 1e5 unchanged; the quota clock
    # moves in ticks instead.
    core = core_with()
    funded(core, rate=0.0, seconds=0.0)
    core.quota.balances[A] = vector([1e5])
    core.submit(action("a", account=A, command=["sleep", "60"]), 0)
    core.step(0)
    for i in range(1, 10_001):
        core.report_load("n1", load(0.0), i / 1000)  # type: ignore[arg-type]
    core.step(10)
    assert core.account(A).balance[0] == f32(1e5 - 10)


def test_running_work_is_demoted_by_a_pass_with_nothing_queued() -> None:
    core = core_with(cpus=4)
    funded(core, rate=1.0, seconds=10)
    core.step(5)
    for i in range(4):
        core.submit(action(f"r{i}", account=A, command=["sleep", "600"]), 5)
    assert [p for _, p in started(core.step(5))] == [0, 0, 0, 0]
    core.quota.balances[A] = vector([-1000])
    assert core.step(6) == []  # nothing queued, but the pass still runs
    # 1 - 4 running = -3 below -600: the three cheapest move down a level.
    assert sorted(r.priority for _, r in core.quota.runs()) == [0, 1, 1, 1]


def test_work_turned_away_by_live_memory_is_reconsidered_after_the_next_sample() -> None:
    core = core_with(cpus=8, memory=16 * GIB)
    core.report_load("n1", load(0.0, available=4 * GIB), 0)  # type: ignore[arg-type]
    core.submit(action("a", memory=3 * GIB), 0)
    core.submit(action("b", memory=3 * GIB), 0)
    assert started(core.step(0)) == [("a", 5)]
    # A little more memory is free: not the 1% that counts as "grew", but b was refused.
    assert core.report_load("n1", load(0.0, available=4 * GIB + 2**20), 1)  # type: ignore[arg-type]
    assert started(core.step(1)) == [("b", 5)]


def test_a_preemption_counts_the_victims_memory_as_freed() -> None:
    core = core_with(memory=8 * GIB)
    core.submit(action("free", memory=6 * GIB), 0)
    core.step(0)
    core.report_load("n1", load(0.0, available=2 * GIB), 1)  # type: ignore[arg-type]
    funded(core, now=1)
    core.submit(action("paid", account=A, memory=4 * GIB), 2)
    assert started(core.step(2)) == [("paid", 0)]


def test_a_big_victim_leaves_room_that_waiting_work_then_uses() -> None:
    core = core_with(cpus=4)
    core.submit(action("big", cpus=4), 0)
    core.step(0)
    core.submit(action("mid", cpus=2), 1)
    assert core.step(1) == []  # examined, no room
    funded(core, now=2)
    core.submit(action("paid", account=A, cpus=1), 3)
    # The 3 CPUs the 4-CPU victim leaves go to "mid" in the same pass's free level.
    assert started(core.step(3)) == [("paid", 0), ("mid", 5)]


def test_a_cancelled_attempt_that_is_preempted_ends_cancelled() -> None:
    core = core_with()
    core.submit(action("free"), 0)
    core.step(0)
    core.report_attempt(report("free", 1, "n1", "running"), 0.5)
    core.cancel(ActionId("free"), 1)  # its stop is on the way
    funded(core, now=1)
    core.submit(action("paid", account=A), 2)
    assert started(core.step(2)) == [("paid", 0)]
    assert core.get(ActionId("free"), 2).stage is Stage.CANCELLED
