"""Conformance with upstream qslib, scenario by scenario (QSCHEDULER.md §1-§4).

Each test starts at a fixed time, moves time in explicit steps and asserts exact decisions,
balances and priorities. Names in brackets are the upstream Go tests a scenario restates;
"derived" scenarios have no upstream test and follow the Go source. Unless a test says
otherwise it runs with `UPSTREAM` quirks; tie orders that upstream leaves to Go map
iteration are never asserted.
"""

from __future__ import annotations

import pytest

from scheduler.core.quota import events as ev
from scheduler.core.quota.events import KeepEvents
from scheduler.core.quota.model import UPSTREAM, Quirks
from scheduler.core.quota.run import run_once
from scheduler.core.quota.scheduler import NotAssigned, QuotaScheduler
from scheduler.core.quota.snapshot import QuotaSnapshot, from_snapshot, to_snapshot
from scheduler.core.quota.vector import FREE_BUCKET, f32, vector
from tests.builders import (
    account,
    acct,
    aid,
    apply_idle,
    balance,
    known,
    nid,
    pairs,
    request,
    running,
    scheduler,
    step,
)

NO_LABELS: frozenset[str] = frozenset()


# ---- accrual, cap, charging, expiry ------------------------------------------------------


@pytest.mark.parametrize(("t", "expected"), [(0, [0, 0, 0, 0, 0]), (1, [1, 2, 3, 0, 0]),
                                             (10, [2, 4, 6, 0, 0])])
def test_balances_accrue_at_their_rates_up_to_a_cap_per_priority(
        t: float, expected: list[float]) -> None:  # [TestUpdateBalance]
    qs, _ = scheduler()
    qs.add_account(acct("a"), account([1, 2, 3], max_seconds=2))
    qs.update_time(t)
    assert balance(qs, "a") == expected


def test_running_tasks_are_charged_and_accrue_cost() -> None:  # [TestUpdateBalance]
    qs, _ = scheduler()
    qs.add_account(acct("a"), account([1, 2, 3], max_seconds=2))
    for i in (1, 2):
        qs.add_request(request(f"r{i}", "a"), 0)
        qs.mark_idle(nid(f"w{i}"), NO_LABELS, 0)
        apply_idle(qs, f"r{i}", f"w{i}", 0)
    qs.update_time(1)
    # p0: 0 - 1 x 2 running = -2, below the cap of 2, so + 1 x rate 1 = -1.
    assert balance(qs, "a") == [-1, 2, 3, 0, 0]
    assert [list(run.cost) for _, run in qs.runs()] == [[1, 0, 0, 0, 0]] * 2


def test_a_balance_step_without_overflow() -> None:  # [TestAccountAdvanceWithNoOverflow]
    qs, _ = scheduler()
    qs.add_account(acct("a"), account([1, 2, 3], max_seconds=10))
    for p in range(3):
        qs.add_request(request(f"r{p}", "a"), 0)
        qs.mark_idle(nid(f"w{p}"), NO_LABELS, 0)
        apply_idle(qs, f"r{p}", f"w{p}", p)
    qs.update_time(2)
    assert balance(qs, "a") == [0, 2, 4, 0, 0]


def test_a_balance_above_its_cap_is_neither_recharged_nor_clamped() -> None:
    # [TestAccountAdvanceWithOverflow]
    qs, _ = scheduler()
    qs.add_account(acct("a"), account([1, 1, 1], max_seconds=10), [9.5, 12, 10.5, 0, 0])
    for p in (1, 2, 3):
        qs.add_request(request(f"r{p}", "a"), 0)
        qs.mark_idle(nid(f"w{p}"), NO_LABELS, 0)
        apply_idle(qs, f"r{p}", f"w{p}", p)
    qs.update_time(1)
    assert balance(qs, "a") == [10, 11, 10, -1, 0]


def test_arithmetic_is_float32() -> None:
    qs, _ = scheduler()
    qs.add_account(acct("a"), account([1.1], max_seconds=100), [0.5])
    qs.update_time(1)
    assert balance(qs, "a")[0] == f32(f32(0.5) + f32(1.1)) != 1.6
    qs.add_account(acct("b"), account([0], max_seconds=0), [1.1])
    qs.add_request(request("r", "b"), 1)
    qs.mark_idle(nid("w"), NO_LABELS, 1)
    apply_idle(qs, "r", "w", 0)
    qs.update_time(3)
    assert balance(qs, "b")[0] == f32(f32(1.1) - 2)  # -0.9f, not -0.9


def test_an_account_without_config_loses_its_balance() -> None:  # [TestUpdateBalance]
    qs, _ = scheduler()
    qs.add_account(acct("a"), account([1, 2, 3], max_seconds=2))
    del qs.configs[acct("a")]  # upstream's test pokes the config away, keeping the balance
    qs.update_time(1)
    assert "a" not in qs.get_balances()


def test_time_going_backwards_changes_nothing() -> None:  # derived D1 [TestUpdateErrors]
    qs, _ = scheduler(now=100)
    qs.add_account(acct("a"), account([1], max_seconds=10))
    qs.mark_idle(nid("w1"), NO_LABELS, 100)
    qs.update_time(50)
    assert (qs.last_update_time, balance(qs, "a"), list(qs.workers)) == (100, [0] * 5, ["w1"])
    qs.update_time(100)
    assert balance(qs, "a") == [0] * 5
    qs.update_time(105)
    qs.update_time(50)
    assert (qs.last_update_time, balance(qs, "a")) == (105, [5, 0, 0, 0, 0])


@pytest.mark.parametrize(("expiry", "kept_at", "gone_at"), [(300, 300, 301), (60, 60, 61)])
def test_idle_workers_expire_after_the_expiry_and_running_ones_never(
        expiry: float, kept_at: float, gone_at: float) -> None:  # [TestExpireWorker], D8
    qs, _ = scheduler(expiry=expiry)
    qs.mark_idle(nid("idle"), NO_LABELS, 0)
    qs.mark_idle(nid("busy"), NO_LABELS, 0)
    qs.add_request(request("r"), 0)
    apply_idle(qs, "r", "busy", FREE_BUCKET)
    qs.update_time(kept_at)
    assert sorted(qs.workers) == ["busy", "idle"]
    qs.update_time(gone_at)
    assert sorted(qs.workers) == ["busy"]
    qs.update_time(10_000)
    assert sorted(qs.workers) == ["busy"]


# ---- matching: free bucket, labels, quality ----------------------------------------------


def test_work_without_an_account_runs_in_the_free_bucket() -> None:  # [TestMatchAccountless]
    qs, _ = scheduler()
    qs.mark_idle(nid("worker"), NO_LABELS, 0)
    qs.add_request(request("req"), 0)
    [only] = run_once(qs)
    assert (only.kind, only.request_id, only.worker_id, only.priority) == \
        ("idle", "req", "worker", FREE_BUCKET)


@pytest.mark.parametrize(("disable_free", "assigned"), [(False, 1), (True, 0)])
def test_disable_free_tasks_keeps_an_unfunded_account_out_of_the_pass(
        disable_free: bool, assigned: int) -> None:  # [TestDisableFreeTasks]
    qs, _ = scheduler()
    qs.add_request(request("rid", "a1"), 0)
    qs.mark_idle(nid("worker"), NO_LABELS, 0)
    qs.add_account(acct("a1"), account(disable_free=disable_free))
    result = run_once(qs)
    assert len(result) == assigned
    if disable_free:
        assert qs.queued[aid("rid")].examined_time == 0.0, "left out: not even examined"
    else:
        assert result[0].priority == FREE_BUCKET


def test_a_worker_prefers_the_request_it_needs_no_provisioning_for() -> None:
    # [TestMatchProvisionableLabel]
    qs, _ = scheduler()
    qs.add_account(acct("account1"), account(fanout=1, max_seconds=1), [1])
    for i in range(500):
        qs.add_request(request(f"t{i}", "account1", provisionable=("a",)), 0)
    qs.add_request(request("reqb", "account1", provisionable=("b",)), 0)
    qs.mark_idle(nid("workerID"), frozenset({"b", "c"}), 0)
    [only] = run_once(qs)
    assert (only.request_id, only.worker_id, only.provision_required) == \
        ("reqb", "workerID", False)


def test_base_labels_are_required() -> None:  # [TestBaseLabelMatch]
    qs, _ = scheduler()
    qs.add_account(acct("AccountID"), account(), [1])
    qs.mark_idle(nid("WorkerID"), NO_LABELS, 0)
    qs.add_request(request("RequestID", "AccountID", base=("unsatisfied_label",)), 0)
    assert run_once(qs) == []
    assert list(qs.queued) == ["RequestID"] and qs.workers[nid("WorkerID")].idle


def test_a_rare_worker_takes_the_more_specific_request() -> None:  # [TestMatchRareLabel]
    qs, _ = scheduler()
    for i in range(10):
        qs.mark_idle(nid(f"CommonWorker{i}"), frozenset({"CommonLabel"}), 0)
    qs.mark_idle(nid("RareWorker"), frozenset({"CommonLabel", "RareLabel"}), 0)
    qs.add_account(acct("AccountID"), account(), [1])
    for i in range(10):
        qs.add_request(request(f"CommonRequest{i}", "AccountID", base=("CommonLabel",)), 0)
    qs.add_request(request("RareRequest", "AccountID", base=("CommonLabel", "RareLabel")), 0)
    result = run_once(qs)
    assert len(result) == 11 and {a.priority for a in result} == {0}
    assert qs.running[aid("RareRequest")] == "RareWorker"


def test_provisioning_step_first_then_unassign_requeues_unless_46_hours_old() -> None:
    # [TestMatchAndUnassign], with the wall clock injected
    now = 1_000_000.0
    tm, t1, t2 = now - 10 * 3600, now - 10 * 3600, now - 47 * 3600
    qs, events = scheduler(now=tm, wall=now)
    qs.mark_idle(nid("w1"), NO_LABELS, tm)
    qs.mark_idle(nid("w2"), frozenset({"label1"}), tm)
    qs.add_request(request("r1", "a1", provisionable=("label1",), enqueued=t1), t1)
    qs.add_request(request("r2", "a1", provisionable=("label2",), enqueued=t2), t2)
    qs.add_account(acct("a1"), account(), [2])
    first = run_once(qs)
    assert [(a.kind, a.priority, a.request_id, a.worker_id, a.time) for a in first] == [
        ("idle", 0, "r1", "w2", tm), ("idle", 0, "r2", "w1", tm)]
    assert qs.is_assigned(aid("r1"), nid("w2")) and qs.is_assigned(aid("r2"), nid("w1"))
    assert not qs.is_assigned(aid("r1"), nid("w1")) and not qs.is_assigned(aid("r2"), nid("w2"))
    assert run_once(qs) == []
    qs.unassign(aid("r1"), nid("w2"), t1)
    qs.unassign(aid("r2"), nid("w1"), t2)
    assert qs.workers == {} and list(qs.queued) == ["r1"], "r2 was enqueued 47 h ago"
    assert [e.task_id for e in events.of_type("unassigned")] == ["r1", "r2"]
    qs.mark_idle(nid("w1"), NO_LABELS, tm)
    qs.mark_idle(nid("w2"), frozenset({"label1"}), tm)
    assert pairs(run_once(qs)) == [("r1", "w2", 0)]


def test_unassign_without_the_wall_clock_quirk_ages_by_the_calls_time() -> None:
    qs, _ = scheduler(quirks=Quirks(), wall=10**9)
    qs.mark_idle(nid("w"), NO_LABELS, 0)
    qs.add_request(request("r", enqueued=0), 0)
    run_once(qs)
    qs.unassign(aid("r"), nid("w"), 3600)  # an hour after enqueueing by the call's clock
    assert list(qs.queued) == ["r"]


def test_unassign_of_a_request_not_on_that_worker_is_an_error() -> None:
    qs, _ = scheduler()
    qs.mark_idle(nid("w"), NO_LABELS, 0)
    qs.add_request(request("r"), 0)
    with pytest.raises(NotAssigned):
        qs.unassign(aid("r"), nid("w"), 0)


# ---- reprioritising ----------------------------------------------------------------------


def _two_running(rates: list[float], balances: list[float], priority: int,
                 ) -> tuple[QuotaScheduler, KeepEvents]:
    qs, events = scheduler()
    qs.add_account(acct("a1"), account(rates), balances)
    for i in (1, 2):
        qs.add_request(request(f"r{i}", "a1"), 0)
        qs.mark_idle(nid(f"w{i}"), NO_LABELS, 0)
        apply_idle(qs, f"r{i}", f"w{i}", priority)
    return qs, events


def test_an_overspent_account_demotes_its_cheapest_task() -> None:
    # [TestSchedulerReprioritize], both at P0
    qs, events = _two_running([1.1, 0.9], [-1200, 1200, 1200], 0)
    qs.workers[nid("w2")].running[aid("r2")].cost = vector([1])
    assert run_once(qs) == []
    assert {r.request.id: r.priority for _, r in qs.runs()} == {"r1": 1, "r2": 0}
    [moved] = events.of_type("reprioritized")
    assert (moved.task_id, moved.priority, moved.new_priority) == ("r1", 0, 1)


@pytest.mark.parametrize(("quirks", "said"), [(UPSTREAM, 2), (Quirks(), 1)])
def test_an_account_with_quota_to_spare_promotes_its_costliest_task(
        quirks: Quirks, said: int) -> None:  # [TestSchedulerReprioritize], both at P2
    qs, events = _two_running([1.1, 0.9], [-1200, 1200, 1200], 2)
    qs.quirks = quirks
    qs.workers[nid("w2")].running[aid("r2")].cost = vector([1])
    assert run_once(qs) == []
    assert {r.request.id: r.priority for _, r in qs.runs()} == {"r1": 2, "r2": 1}
    [moved] = events.of_type("reprioritized")
    # Upstream's event says p+1 for a promotion to p; fixed unless the quirk is on.
    assert (moved.task_id, moved.priority, moved.new_priority) == ("r2", 2, said)


def test_a_task_can_fall_several_levels_in_one_pass() -> None:  # derived D6
    qs, events = scheduler()
    qs.add_account(acct("a1"), account(), [-1200, -1200])
    qs.add_request(request("r1", "a1"), 0)
    qs.mark_idle(nid("w1"), NO_LABELS, 0)
    apply_idle(qs, "r1", "w1", 0)
    assert run_once(qs) == []
    assert running(qs, "r1").priority == 2
    assert [(e.priority, e.new_priority) for e in events.of_type("reprioritized")] == \
        [(0, 1), (1, 2)]


def test_a_free_task_is_promoted_when_its_account_can_pay() -> None:  # derived D7
    qs, _ = scheduler(quirks=Quirks())
    qs.add_account(acct("a1"), account([2]), [1200])
    qs.add_request(request("r1", "a1"), 0)
    qs.mark_idle(nid("w1"), NO_LABELS, 0)
    apply_idle(qs, "r1", "w1", FREE_BUCKET)
    assert run_once(qs) == []
    assert running(qs, "r1").priority == 0


# ---- preemption --------------------------------------------------------------------------


def _preemption_setup(disable_preemption: bool = False) -> tuple[QuotaScheduler, KeepEvents]:
    """[TestSchedulerPreempt]: a1 runs r1 on w1 and r2 on w2 at P1; r2 is cheaper."""
    qs, events = scheduler(disable_preemption=disable_preemption)
    qs.add_account(acct("a1"), account([1, 1, 1]), [300, 1])
    for i in (1, 2):
        qs.add_request(request(f"r{i}", "a1"), 0)
        qs.mark_idle(nid(f"w{i}"), NO_LABELS, 0)
        apply_idle(qs, f"r{i}", f"w{i}", 1)
    qs.workers[nid("w1")].running[aid("r1")].cost = vector([0, 1])
    return qs, events


def test_a_funded_request_preempts_the_cheapest_lower_priority_task() -> None:
    # [TestSchedulerPreempt], sufficient balance
    qs, events = _preemption_setup()
    qs.add_account(acct("a2"), account())
    qs.add_request(request("r3", "a2"), 0)
    qs.balances[acct("a2")] = vector([1])
    result = step(qs, 1)
    assert [(a.kind, a.priority, a.worker_id, a.request_id, a.task_to_abort, a.time)
            for a in result] == [("preempt", 0, "w2", "r3", "r2", 1)]
    # The victim's cost [0,1] is refunded to a1 and charged to a2; r3 inherits it.
    assert balance(qs, "a1") == [300, 1, 0, 0, 0]
    assert balance(qs, "a2") == [1, -1, 0, 0, 0]
    run = qs.run_of(aid("r3"))
    assert run is not None and (run.priority, list(run.cost)) == (0, [0, 1, 0, 0, 0])
    assert qs.get_request(aid("r2")) is None
    assert running(qs, "r1").cost == vector([0, 2])
    [preempted] = events.of_type("preempted")
    assert (preempted.task_id, preempted.preempting_task_id, preempted.priority,
            preempted.new_priority) == ("r2", "r3", 1, 0)


def test_an_unfunded_request_does_not_preempt() -> None:
    # [TestSchedulerPreempt], insufficient balance: it waits in the free bucket
    qs, _ = _preemption_setup()
    qs.add_account(acct("a2"), account())
    qs.add_request(request("r3", "a2"), 0)
    assert run_once(qs) == []


def test_an_account_running_lower_priority_work_may_not_preempt() -> None:
    # [TestSchedulerPreempt], same account
    qs, _ = _preemption_setup()
    qs.add_request(request("r3", "a1"), 0)
    assert run_once(qs) == []


@pytest.mark.parametrize(("funds", "expected"), [(1.0, []), (1.5, [("r3", "w2", 0)])])
def test_preemption_needs_the_victims_cost_below_the_preemptors_balance(
        funds: float, expected: list[tuple[str, str, int]]) -> None:  # derived D3
    qs, _ = _preemption_setup()
    qs.workers[nid("w1")].running[aid("r1")].cost = vector([2])
    qs.workers[nid("w2")].running[aid("r2")].cost = vector([1])
    qs.add_account(acct("a2"), account())
    qs.add_request(request("r3", "a2"), 0)
    qs.balances[acct("a2")] = vector([funds])
    assert pairs(run_once(qs)) == expected
    if expected:
        assert balance(qs, "a1") == [301, 1, 0, 0, 0]
        assert balance(qs, "a2") == [0.5, 0, 0, 0, 0]


def test_preemption_refunds_the_victim_and_charges_the_preemptor() -> None:  # [TestApplyPreempt]
    qs, _ = scheduler()
    qs.add_account(acct("a1"), account(), [1])
    qs.add_account(acct("a2"), account(), [2])
    qs.add_request(request("t1", "a1"), 0)
    qs.mark_idle(nid("w1"), NO_LABELS, 0)
    apply_idle(qs, "t1", "w1", 2)
    qs.workers[nid("w1")].running[aid("t1")].cost = vector([1])
    qs.add_request(request("t2", "a2"), 0)
    assert pairs(run_once(qs)) == [("t2", "w1", 0)]
    assert (balance(qs, "a1"), balance(qs, "a2")) == ([2, 0, 0, 0, 0], [1, 0, 0, 0, 0])
    assert running(qs, "t2").cost == vector([1]) and qs.queued == {}


def test_disabled_preemption_and_the_examined_time_cut() -> None:  # derived D2a, D2b
    qs, _ = _preemption_setup(disable_preemption=True)
    qs.add_account(acct("a2"), account())
    qs.add_request(request("r3", "a2"), 0)
    qs.balances[acct("a2")] = vector([1])
    assert step(qs, 1) == []
    assert qs.queued[aid("r3")].examined_time == 1
    qs.options = qs.options.model_copy(update={"disable_preemption": False})
    # Upstream: r3 was examined after both workers last changed, so it can never preempt
    # them (quirk); without the quirk it preempts now.
    assert run_once(qs) == []
    qs.quirks = Quirks()
    assert pairs(run_once(qs)) == [("r3", "w2", 0)]


@pytest.mark.parametrize(("quirks", "preemptions"), [(UPSTREAM, 2), (Quirks(), 1)])
def test_chained_preemption_is_upstreams_and_off_by_default(
        quirks: Quirks, preemptions: int) -> None:  # derived D10
    qs, _ = scheduler(quirks=quirks)
    qs.mark_idle(nid("w1"), NO_LABELS, 0)
    qs.add_request(request("rX"), 0)
    assert pairs(run_once(qs)) == [("rX", "w1", FREE_BUCKET)]
    qs.add_account(acct("a2"), account(), [10])
    qs.add_request(request("q1", "a2"), 0)
    qs.add_request(request("q2", "a2"), 0)
    result = run_once(qs)
    assert [a.kind for a in result] == ["preempt"] * preemptions
    assert result[0].task_to_abort == "rX"
    if preemptions == 2:
        assert result[1].task_to_abort == result[0].request_id, "the preemptor is preempted"
        assert qs.queued == {} and qs.get_request(result[0].request_id) is None
    else:
        assert len(qs.queued) == 1
    assert balance(qs, "a2") == [10, 0, 0, 0, 0]


# ---- fanout and per-label limits -----------------------------------------------------------


def test_over_fanout_work_runs_in_the_free_bucket() -> None:  # [TestMatchThrottledAccountJobs]
    qs, _ = scheduler()
    qs.add_account(acct("Account1"), account(fanout=1), [1])
    prov = ("foo-installable-userspace-1", "foo-installable-firmware-2")
    sim = ("simlabel 1", "simlabel 2")
    diff = ("diffbase 1", "diffbase 2")
    qs.add_request(request("sim1", "Account1", base=sim, provisionable=prov), 0)
    qs.add_request(request("sim2", "Account1", base=sim, provisionable=prov), 0)
    qs.add_request(request("diff", "Account1", base=diff, provisionable=prov), 0)
    for w in ("0", "1", "2"):
        qs.mark_idle(nid(w), frozenset(prov + sim + diff), 0)
    result = run_once(qs)
    by_request = {a.request_id: a.priority for a in result}
    assert len(result) == 3 and by_request[aid("diff")] == 0
    assert sorted(by_request.values()) == [0, 0, FREE_BUCKET]


def test_a_fanout_group_is_one_set_of_labels_whichever_list_they_are_in() -> None:
    """Upstream keys a fanout group by the account and the sorted concatenation of the
    provisionable and base labels (derived, from `TaskRequest.fanoutGroup`, 2019-09 on).
    r1 (provisionable x) and r2 (base x) are one group, so with MaxFanout 1 only one runs
    paid: w2 is the only worker r2 fits and needs no provisioning for, so it takes r2 at
    P0; r1 is throttled at P0, moves to the free list and gets w1 in the free pass."""
    qs, _ = scheduler()
    qs.add_account(acct("A"), account(fanout=1), [1])
    qs.mark_idle(nid("w1"), NO_LABELS, 0)
    qs.mark_idle(nid("w2"), frozenset({"x"}), 0)
    qs.add_request(request("r1", "A", provisionable=("x",)), 0)
    qs.add_request(request("r2", "A", base=("x",)), 0)
    result = run_once(qs)
    assert [(a.kind, a.request_id, a.worker_id, a.priority, a.provision_required)
            for a in result] == [("idle", "r2", "w2", 0, False),
                                 ("idle", "r1", "w1", FREE_BUCKET, True)]
    assert {r.request.id: r.priority for _, r in qs.runs()} == {"r1": FREE_BUCKET, "r2": 0}


def test_without_enforced_limits_fanout_is_ignored_as_upstream_now_does() -> None:
    qs, _ = scheduler(quirks=Quirks(enforce_limits=False))
    qs.add_account(acct("a"), account(fanout=1), [1])
    for i in range(3):
        qs.add_request(request(f"r{i}", "a"), 0)
        qs.mark_idle(nid(f"w{i}"), NO_LABELS, 0)
    assert [a.priority for a in run_once(qs)] == [0, 0, 0]


def test_examined_time_is_not_stamped_on_throttled_work_kept_out_of_free() -> None:
    # [TestExaminedTime], 2019-2022 form
    qs, _ = scheduler(now=100)
    qs.add_request(request("r0", enqueued=100), 100)
    assert qs.queued[aid("r0")].examined_time == 0
    run_once(qs)
    assert qs.queued[aid("r0")].examined_time == 100
    qs, _ = scheduler(now=100)
    qs.add_account(acct("a1"), account([100], max_seconds=10, fanout=1, disable_free=True), [100])
    qs.add_request(request("r1", "a1", enqueued=100), 100)
    qs.add_request(request("r2", "a1", enqueued=100), 100)
    run_once(qs)
    assert [r.examined_time for r in qs.queued.values()] == [100, 100]
    qs.mark_idle(nid("w1"), NO_LABELS, 110)
    assert len(step(qs, 110)) == 1 and balance(qs, "a1")[0] == 1000
    [left] = qs.queued.values()
    assert left.examined_time == 100, "throttled and disable-free: not stamped"
    qs.configs[acct("a1")] = qs.configs[acct("a1")].model_copy(update={"max_fanout": 10})
    qs.balances[acct("a1")] = vector([])
    run_once(qs)
    assert left.examined_time == 100, "free and disable-free: left out of the pass"
    qs.configs[acct("a1")] = qs.configs[acct("a1")].model_copy(update={"disable_free_tasks": False})
    assert step(qs, 120) == []
    assert balance(qs, "a1")[0] == 990 and left.examined_time == 120


@pytest.mark.parametrize(("second_label", "assigned"), [("label-model:eve", 1),
                                                         ("label-model:kevin", 2)])
def test_per_label_limits_cap_work_per_label_value(second_label: str, assigned: int) -> None:
    # derived D9 [TestCount, TestIsAtAnyLimit]
    qs, _ = scheduler(now=10)
    qs.add_account(acct("a1"), account(limits={"label-model": 1}), [1])
    qs.add_request(request("q1", "a1"), 10)
    qs.add_request(request("q2", "a1"), 10)
    qs.mark_idle(nid("w1"), frozenset({"label-model:eve"}), 10)
    qs.mark_idle(nid("w2"), frozenset({second_label}), 10)
    result = run_once(qs)
    assert len(result) == assigned and {a.priority for a in result} == {0}
    for waiting in qs.queued.values():
        assert waiting.examined_time == 10  # still at P0: a label limit is not fanout


# ---- reconciliation ----------------------------------------------------------------------


def test_mark_idle_updates_labels_unless_stale() -> None:  # [TestMarkIdle] group 1
    qs, _ = scheduler()
    qs.mark_idle(nid("w1"), frozenset({"old_label"}), 1)
    qs.mark_idle(nid("w1"), frozenset({"new_label"}), 0)
    assert qs.workers[nid("w1")].labels == {"old_label"}
    qs.mark_idle(nid("w1"), frozenset({"new_label"}), 2)
    assert qs.workers[nid("w1")].labels == {"new_label"}


@pytest.mark.parametrize(("t", "idle", "confirmed"), [(2, True, 2), (0, False, 1)])
def test_mark_idle_of_a_busy_worker_ends_its_task_unless_stale(
        t: float, idle: bool, confirmed: float) -> None:  # [TestMarkIdle] group 2
    qs, events = scheduler()
    qs.mark_idle(nid("w1"), NO_LABELS, 1)
    qs.add_request(request("r1", enqueued=1), 1)
    apply_idle(qs, "r1", "w1", 0)
    qs.mark_idle(nid("w1"), NO_LABELS, t)
    assert qs.workers[nid("w1")].idle is idle and qs.workers[nid("w1")].confirmed_time == confirmed
    if idle:
        [done] = events.of_type("completed")
        assert (done.task_id, done.reason) == ("r1", ev.BOT_IDLE)
        assert qs.get_request(aid("r1")) is None


def test_a_workers_modified_time_is_scheduler_time_and_moves_only_on_change() -> None:
    # [TestWorkerModifiedTime]
    qs, _ = scheduler(now=100)
    qs.mark_idle(nid("w1"), NO_LABELS, 0)
    assert qs.workers[nid("w1")].modified_time == 100
    qs.update_time(110)
    qs.mark_idle(nid("w1"), NO_LABELS, 100)
    qs.mark_idle(nid("w1"), frozenset({"foo"}), 0)
    assert qs.workers[nid("w1")].modified_time == 100
    qs.mark_idle(nid("w1"), frozenset({"foo"}), 200)
    assert qs.workers[nid("w1")].modified_time == 110
    qs, _ = scheduler(now=100)
    qs.mark_idle(nid("w1"), NO_LABELS, 0)
    qs.add_request(request("r1", enqueued=100), 100)
    assert pairs(run_once(qs)) == [("r1", "w1", FREE_BUCKET)]
    assert qs.workers[nid("w1")].modified_time == 100
    qs.update_time(110)
    qs.mark_idle(nid("w1"), NO_LABELS, 110)
    assert qs.workers[nid("w1")].idle and qs.workers[nid("w1")].modified_time == 110


def _r1_on_w1(worker_confirmed: float = 3) -> tuple[QuotaScheduler, KeepEvents]:
    qs, events = scheduler()
    qs.add_request(request("r1", enqueued=1), 1)
    qs.mark_idle(nid("w1"), NO_LABELS, worker_confirmed)
    apply_idle(qs, "r1", "w1", 0)
    return qs, events


@pytest.mark.parametrize(("t", "requeued"), [(0, False), (2, False), (3, True), (4, True)])
def test_news_that_a_running_request_waits_requeues_it_only_if_newer(
        t: float, requeued: bool) -> None:  # derived D4 [TestnotifyRequest] group 1
    qs, _ = _r1_on_w1()
    qs.add_request(request("r1", enqueued=1), t)
    if requeued:
        assert "w1" not in qs.workers and qs.queued[aid("r1")].confirmed_time == t
    else:
        assert qs.is_assigned(aid("r1"), nid("w1")) and qs.queued == {}


@pytest.mark.parametrize(("t", "request_confirmed", "worker_confirmed"),
                         [(0, 1, 3), (2, 2, 3), (4, 4, 4)])
def test_news_that_a_request_runs_where_it_does_confirms_both(
        t: float, request_confirmed: float, worker_confirmed: float) -> None:
    # [TestnotifyRequest] group 1, with a worker id
    qs, _ = _r1_on_w1()
    qs.notify_running(aid("r1"), nid("w1"), t)
    assert qs.is_assigned(aid("r1"), nid("w1"))
    assert known(qs, "r1").confirmed_time == request_confirmed
    assert qs.workers[nid("w1")].confirmed_time == worker_confirmed


@pytest.mark.parametrize(("t", "workers"), [(0, ["w1", "w2"]), (2, ["w2"]), (4, [])])
def test_news_that_a_request_runs_elsewhere_deletes_the_inconsistent_records(
        t: float, workers: list[str]) -> None:  # [TestnotifyRequest] group 2
    qs, events = scheduler()
    qs.add_request(request("r1", enqueued=1), 1)
    qs.mark_idle(nid("w1"), NO_LABELS, 1)
    qs.mark_idle(nid("w2"), NO_LABELS, 3)
    apply_idle(qs, "r1", "w1", 0)
    qs.notify_running(aid("r1"), nid("w2"), t)
    assert sorted(qs.workers) == workers
    if t > 0:
        assert qs.get_request(aid("r1")) is None and qs.queued == {}
        assert events.of_type("completed")[0].reason == ev.INCONSISTENT_BOT_FOR_TASK


@pytest.mark.parametrize(("t", "kept"), [(0, True), (1, False), (2, False)])
def test_news_that_an_unknown_request_runs_on_a_worker_deletes_it_unless_stale(
        t: float, kept: bool) -> None:  # [TestnotifyRequest] group 3
    qs, _ = scheduler()
    qs.mark_idle(nid("w1"), NO_LABELS, 1)
    qs.notify_running(aid("r1"), nid("w1"), t)
    assert ("w1" in qs.workers) is kept


def test_news_that_a_queued_request_runs_deletes_the_worker_and_keeps_it_queued() -> None:
    # derived D5
    qs, _ = scheduler()
    qs.add_request(request("r1", enqueued=1), 1)
    qs.mark_idle(nid("w1"), NO_LABELS, 3)
    qs.notify_running(aid("r1"), nid("w1"), 2)
    assert "w1" in qs.workers
    qs.notify_running(aid("r1"), nid("w1"), 5)
    assert "w1" not in qs.workers and qs.queued[aid("r1")].confirmed_time == 1


@pytest.mark.parametrize(("running", "t", "gone"), [(False, 2, True), (False, 0, False),
                                                     (True, 2, True), (True, 0, False)])
def test_news_that_a_request_is_absent_deletes_it_unless_stale(
        running: bool, t: float, gone: bool) -> None:  # [TestabortRequest]
    qs, events = scheduler()
    qs.add_request(request("request1", enqueued=1), 1)
    qs.mark_idle(nid("worker1"), NO_LABELS, 1)
    if running:
        apply_idle(qs, "request1", "worker1", 0)
    qs.notify_absent(aid("request1"), t)
    assert (qs.get_request(aid("request1")) is None) is gone
    # A running request's worker goes with it (it returns at its next mark_idle).
    assert ("worker1" in qs.workers) is (not (running and gone))
    if gone:
        reason = ev.RUNNING_TASK_ABSENT if running else ev.IDLE_TASK_ABSENT
        assert [e.reason for e in events.of_type("completed")] == [reason]


def test_the_upstream_example_end_to_end() -> None:  # [Example, doc_test.go]
    qs, events = scheduler()
    qs.add_account(acct("Account1"), account([1, 2, 3], max_seconds=1))
    qs.update_time(1)
    qs.add_request(request("Request1", "Account1", provisionable=("Label1",), enqueued=1), 1)
    qs.mark_idle(nid("Worker1"), frozenset({"Label2"}), 1)
    assert not qs.is_assigned(aid("Request1"), nid("Worker1"))
    [first] = step(qs, 2)
    assert (first.request_id, first.priority, first.provision_required) == \
        ("Request1", 0, True)
    qs.update_time(3)
    assert balance(qs, "Account1") == [1, 2, 3, 0, 0]
    assert running(qs, "Request1").cost == vector([1])
    qs.notify_running(aid("Request1"), nid("Worker1"), 3)
    assert qs.is_assigned(aid("Request1"), nid("Worker1"))
    qs.update_time(4)
    qs.notify_running(aid("Request2"), nid("Worker1"), 4)
    assert not qs.is_assigned(aid("Request1"), nid("Worker1"))
    assert events.of_type("completed")[-1].reason == ev.INCONSISTENT_TASK_FOR_BOT
    assert balance(qs, "Account1") == [1, 2, 3, 0, 0], "no refund"


# ---- snapshots ---------------------------------------------------------------------------


def test_a_snapshot_round_trip_loses_nothing_and_runs_the_same() -> None:  # [TestClone]
    qs, _ = scheduler(now=100)
    qs.add_account(acct("aid"), account([2, 3, 4], max_seconds=1, fanout=1))
    qs.add_request(request("req1", "a1", base=("base 1", "base 2"),
                           provisionable=("provision 1", "provision 2"), enqueued=100), 100)
    qs.add_request(request("req2", "a1", base=("base 3", "base 4"),
                           provisionable=("provision 3", "provision 4"), enqueued=100), 100)
    qs.mark_idle(nid("worker 1"), frozenset({"base 1", "base 2"}), 100)
    qs.mark_idle(nid("worker 2"), frozenset({"base foo", "base bar"}), 100)
    assert pairs(run_once(qs)) == [("req1", "worker 1", FREE_BUCKET)]
    assert qs.queued[aid("req2")].examined_time == 100
    snap = to_snapshot(qs)
    text = snap.model_dump_json()
    again = from_snapshot(QuotaSnapshot.model_validate_json(text), UPSTREAM)
    assert to_snapshot(again) == snap
    assert again.running == {"req1": "worker 1"}
    for s in (qs, again):
        s.add_account(acct("rich"), account([1], max_seconds=100), [50])
        s.add_request(request("req5", "rich", enqueued=101), 101)
        s.mark_idle(nid("worker 3"), NO_LABELS, 101)
    assert pairs(step(qs, 150)) == pairs(step(again, 150))
    assert to_snapshot(qs) == to_snapshot(again)


# ---- orders upstream fixes (not left to map iteration) -------------------------------------


def test_requests_never_examined_come_before_ones_that_waited_through_a_pass() -> None:
    qs, _ = scheduler()
    qs.add_request(request("old", enqueued=0), 0)
    step(qs, 3)  # no workers: "old" is examined at t=3 and waits
    qs.update_time(5)
    qs.add_request(request("new", enqueued=5), 5)
    qs.mark_idle(nid("w"), NO_LABELS, 5)
    # Examined time, not enqueue time, orders the queue: the newcomer goes first.
    assert pairs(run_once(qs)) == [("new", "w", FREE_BUCKET)]


def test_a_worker_takes_its_most_specific_matching_request_first() -> None:
    qs, _ = scheduler()
    qs.add_request(request("plain", base=("x",)), 0)
    qs.add_request(request("specific", base=("x", "y")), 0)
    qs.mark_idle(nid("w"), frozenset({"x", "y"}), 0)
    assert pairs(run_once(qs)) == [("specific", "w", FREE_BUCKET)]
