"""Quota scheduling on a real cluster: accounts from Python and the CLI, preemption of free
work by paid work, and CPU shares that follow the accounts' charge rates."""

from __future__ import annotations

import json

import pytest

from mesh import AccountConfig, Action, Conflict, InvalidInput, NotFound, Stage
from mesh.calls import call
from mesh.schema import QuotaOptions
from mesh.waiting import wait_until
from tests.integration.cluster import Accounts, Mesh, mesh_cli, survivors

pytestmark = pytest.mark.integration


def test_accounts_from_python_with_configs_checked_field_by_field(
        mesh: Mesh, accounts: Accounts) -> None:
    client = mesh.client
    accounts.own("qa-neg")  # refused below; removed should it be created all the same
    created = accounts.create("qa-admin", charge_rate=[2, 1], max_charge_seconds=60)
    assert created.config.charge_rate == [2, 1] and created.balance == [0.0] * 5
    again = client.create_account("qa-admin", charge_rate=[2, 1], max_charge_seconds=60)
    assert again.config == created.config, "the same create again is harmless"
    with pytest.raises(Conflict, match="already exists"):
        client.create_account("qa-admin", AccountConfig())
    with pytest.raises(InvalidInput, match="charge_rate") as bad:
        client.create_account("qa-neg", charge_rate=[-1])
    assert "priority 0" in str(bad.value)
    with pytest.raises(InvalidInput, match="max_fanout"):
        client.modify_account("qa-admin", max_fanout=-3)
    with pytest.raises(InvalidInput, match="account id"):
        client.create_account("bad id!", AccountConfig())
    changed = client.modify_account("qa-admin", max_fanout=4)
    assert changed.config.max_fanout == 4 and changed.config.charge_rate == [2, 1]
    assert "qa-admin" in [a.id for a in client.accounts()]
    with pytest.raises(InvalidInput, match="account: no account 'qa-nope'"):
        client.submit(Action(command=["true"], account="qa-nope"))
    client.delete_account("qa-admin")
    with pytest.raises(NotFound):
        client.account("qa-admin")
    assert client.quota_options().disable_preemption is False


def test_changes_sent_by_a_bare_ray_call_are_checked_too(mesh: Mesh, accounts: Accounts) -> None:
    # Ray unpickles a model without validating it; a list is not a set of changes at all.
    # Either, put in force, would stop the scheduler when it next saves its accounts.
    accounts.create("qa-raw", max_fanout=2)
    scheduler = mesh.client.scheduler
    unchecked = AccountConfig.model_construct(max_fanout=-3)
    with pytest.raises(InvalidInput, match="max_fanout"):
        call(scheduler.modify_account, "qa-raw", unchecked)
    with pytest.raises(InvalidInput, match="quota options: expected a mapping"):
        call(scheduler.quota_options, [("disable_preemption", True)])
    with pytest.raises(InvalidInput, match="agent_expiry"):
        call(scheduler.quota_options, QuotaOptions.model_construct(agent_expiry=-1.0,
                                                                  disable_preemption=False))
    assert mesh.client.account("qa-raw").config.max_fanout == 2
    assert mesh.client.quota_options().agent_expiry > 0


def test_accounts_from_the_cli(mesh: Mesh, accounts: Accounts) -> None:
    accounts.own("qa-cli")
    made = mesh_cli(mesh, "accounts", "create", "qa-cli", "--rate", "0=1", "--rate", "2=0.5",
                    "--max-charge-seconds", "10", "--label-limit", "pool=1", "--no-free")
    assert made.returncode == 0, made.stderr
    listed = json.loads(mesh_cli(mesh, "accounts", "list", "--json").stdout)
    [mine] = [a for a in listed if a["id"] == "qa-cli"]
    assert mine["config"]["charge_rate"] == [1, 0, 0.5]
    assert mine["config"]["per_label_task_limits"] == {"pool": 1}
    assert mine["config"]["disable_free_tasks"] is True
    bad = mesh_cli(mesh, "accounts", "modify", "qa-cli", "--rate", "7=1")
    assert bad.returncode == 2 and "unknown priority 7" in bad.stderr
    negative = mesh_cli(mesh, "accounts", "modify", "qa-cli", "--rate", "1=-2")
    assert negative.returncode == 2 and "charge_rate" in negative.stderr
    assert mesh_cli(mesh, "accounts", "modify", "qa-cli", "--rate", "1=3").returncode == 0
    shown = mesh_cli(mesh, "accounts", "show", "qa-cli")
    assert "charge rate p0..p4: 1 3 0.5" in shown.stdout, shown.stdout
    options = mesh_cli(mesh, "accounts", "options", "--json")
    assert json.loads(options.stdout)["disable_preemption"] is False
    assert "accounts:" in mesh_cli(mesh, "status").stdout
    assert mesh_cli(mesh, "accounts", "delete", "qa-cli").returncode == 0
    gone = mesh_cli(mesh, "accounts", "show", "qa-cli")
    assert gone.returncode == 2 and "no account 'qa-cli'" in gone.stderr


def test_paid_work_preempts_free_work_which_is_killed_requeued_and_told_why(
        mesh: Mesh, accounts: Accounts) -> None:
    client = mesh.client
    free = client.submit(Action(command=["echo free-started; sleep 60"], shell=True,
                                labels=["pool:small"]))
    wait_until(free.status, lambda s: s.stage is Stage.RUNNING, what="the free action running")
    wait_until(lambda: survivors(free.id), bool, what="its processes")
    accounts.create("qa-prio", charge_rate=[1], max_charge_seconds=100)
    paid = client.submit(Action(command=["echo paid"], shell=True, labels=["pool:small"],
                                account="qa-prio"))
    assert paid.result(timeout=60).stage is Stage.SUCCEEDED
    assert paid.status().attempts[-1].priority == 0
    first = free.status().attempts[0]
    assert first.outcome == "preempted" and "preempted by action " + paid.id in first.reason
    log = [line.text for line in free.logs(attempt=1, follow=True)]  # until its log closes
    assert log[0] == "free-started"
    assert log[-1].startswith("actionmesh: stopping this attempt: preempted by action")
    # It runs again on its own (a preemption spends no retry budget), and can be cancelled.
    again = wait_until(free.status, lambda s: s.attempt == 2 and s.stage is Stage.RUNNING,
                       what="the free action's second attempt")
    assert again.attempts[-1].priority == 5
    free.cancel()
    assert free.result(timeout=60).stage is Stage.CANCELLED
    wait_until(lambda: survivors(free.id), lambda pids: not pids, what="no processes left")


def test_two_accounts_get_cpu_in_proportion_to_their_charge_rates(
        mesh: Mesh, accounts: Accounts) -> None:
    client = mesh.client
    # The big agent has 2 CPUs; rates 1.5 and 0.5 share them 3:1. A small cap keeps either
    # from saving up a burst.
    accounts.create("qa-fast", charge_rate=[1.5], max_charge_seconds=1)
    accounts.create("qa-slow", charge_rate=[0.5], max_charge_seconds=1)
    actions = []
    for i in range(40):  # interleaved: first come, first served would give 1:1
        for account in ("qa-fast", "qa-slow"):
            actions.append(Action(id=f"share-{account}-{i}", command=["sleep", "0.4"],
                                  labels=["pool:big"], account=account))
    handles = client.submit_many(actions)
    by_id = {h.id: h for h in handles}

    def done() -> dict[str, int]:
        finished = client.list(stage="succeeded")
        return {account: sum(1 for a in finished if a.id in by_id and a.action.account == account)
                for account in ("qa-fast", "qa-slow")}

    # Judge while both still have work waiting: 32 actions done, 80 submitted.
    counts = wait_until(done, lambda c: sum(c.values()) >= 32, timeout=120,
                        what="32 of the 80 actions done")
    ratio = counts["qa-fast"] / max(1, counts["qa-slow"])
    assert 2.0 <= ratio <= 5.0, f"CPU shares {counts} are not about 3:1"
    # The 48 or so still waiting are cancelled with their accounts after the test.
