"""Groups in the core: the placement rules a pool config adds (capacity, blocked,
capabilities, a job's group as a preference or a pin), jobs' homes and their dispatch, and
the groups kept across a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.errors import NotFound
from mesh.poolconfig import PoolConfig
from mesh.schema import AccountConfig
from mesh.stages import Stage
from scheduler.core.decisions import Assign
from scheduler.core.state import SchedulerState
from scheduler.store import Store
from tests.builders import acct, action, agent, aid, load, nid, report

CONFIG = """
groups:
  big:
    match: {labels: ['pool:big']}
    capabilities: [warm-cache]
  small:
    match: {hostnames: ['host-s*']}
    capacity: 50
"""


def pool(config: str = CONFIG, cpus: float = 4) -> SchedulerState:
    """b1, b2 in `big` (label pool:big), s1 in `small` (by hostname); all with `cpus` CPUs."""
    core = SchedulerState(stale_after=1e9)
    for name, labels in (("b1", ["pool:big"]), ("b2", ["pool:big"]), ("s1", [])):
        info = agent(name, cpus=cpus, labels=labels)
        core.agent_joined(info.model_copy(update={"hostname": f"host-{name}"}), 0)
        core.load(nid(name), load(), 0)
    core.apply_pool(PoolConfig.parse(config), 0)
    return core


def placed(core: SchedulerState, now: float) -> dict[str, str]:
    return {d.action_id: d.agent_id for d in core.step(now) if isinstance(d, Assign)}


def run_and_end(core: SchedulerState, where: dict[str, str], now: float) -> None:
    for action_id, agent_id in where.items():
        core.report(report(action_id, 1, agent_id, "running"), now)
        core.report(report(action_id, 1, agent_id, "succeeded", exit_code=0), now + 10)


def test_each_agent_takes_its_groups_terms() -> None:
    core = pool()
    shown = {s.info.agent_id: (s.group, s.capacity_percent) for s in core.pool(1)}
    assert shown == {"b1": ("big", 100), "b2": ("big", 100), "s1": ("small", 50)}
    status = core.pool_status(1)
    assert [(g.name, g.agents) for g in status.groups] == [
        ("big", ["b1", "b2"]), ("small", ["s1"]), ("default", [])]
    assert [g.cpus for g in status.groups] == [8, 2, 0]


@pytest.mark.parametrize(("cpus", "fits"), [
    pytest.param(2.0, True, id="half-of-4-exactly-fits"),
    pytest.param(2.5, False, id="just-over-half"),
])
def test_capacity_50_halves_what_an_agent_takes(cpus: float, fits: bool) -> None:
    core = pool()
    core.submit([action("a", cpus=cpus, labels=["mesh-group:small"])], 1)
    assert ("a" in placed(core, 1)) == fits
    if not fits:
        pending = core.get(aid("a"), 1).pending
        assert pending is not None and "2 free of 2" in pending.summary, pending


def test_a_capability_is_offered_by_the_groups_agents_only() -> None:
    core = pool()
    core.submit([action(f"w{i}", labels=["warm-cache"]) for i in range(3)], 1)
    assert set(placed(core, 1).values()) <= {"b1", "b2"}


@pytest.mark.parametrize(("config", "blocked_by"), [
    pytest.param(CONFIG.replace("capacity: 50", "capacity: 50\n    blocked: true"), "config",
                 id="blocked-in-the-file"),
    pytest.param(CONFIG, "operator", id="blocked-by-hand"),
])
def test_a_blocked_group_finishes_its_work_and_takes_none(config: str, blocked_by: str) -> None:
    core = pool(CONFIG)
    core.submit([action("running", labels=["mesh-group:small"])], 1)
    assert placed(core, 1) == {"running": "s1"}
    core.report(report("running", 1, "s1", "running"), 2)
    if blocked_by == "config":
        core.apply_pool(PoolConfig.parse(config), 3)
    else:
        assert core.block_group("small", True, 3).blocked_by == "operator"
    assert next(s.state for s in core.pool(3) if s.info.agent_id == "s1") == "blocked"
    core.submit([action("new", labels=["mesh-group:small"]), action("any")], 4)
    assert "new" not in (went := placed(core, 4)) and went["any"] in ("b1", "b2")
    pending = core.get(aid("new"), 4).pending
    assert pending is not None and "group `small`, which is blocked" in pending.summary
    core.report(report("running", 1, "s1", "succeeded", exit_code=0), 5)
    assert core.get(aid("running"), 5).stage is Stage.SUCCEEDED, "its running work finished"
    if blocked_by == "operator":
        core.block_group("small", False, 6)
        assert placed(core, 6) == {"new": "s1"}


def test_a_job_sticks_to_the_group_it_first_ran_in() -> None:
    core = pool()
    core.submit([action("first", job="build", labels=["mesh-group:big"])], 1)
    went = placed(core, 1)
    assert core.job_home("build", 1).how == "first run" and went["first"] in ("b1", "b2")
    run_and_end(core, went, 2)
    # s1 (2 CPUs free of its half) is the best fit; the job's warm group still comes first.
    core.submit([action("again", job="build"), action("other", job="elsewhere")], 20)
    went = placed(core, 20)
    assert went["again"] in ("b1", "b2") and went["other"] == "s1", went


def test_a_preferred_job_goes_elsewhere_when_its_group_is_full_and_says_so() -> None:
    core = pool(CONFIG + "assignments: {build: small}\n", cpus=1)
    core.submit([action("one", job="build", cpus=0.5), action("two", job="build", cpus=0.5)], 1)
    went = placed(core, 1)
    assert went["one"] == "s1" and went["two"] in ("b1", "b2")
    core.submit([action("big-one", job="build", cpus=2)], 2)
    pending = core.get(aid("big-one"), 2).pending
    assert pending is not None
    assert "job `build` prefers group `small` (warm): there, 1 agent lacks 2 CPUs" in (
        pending.summary), pending.summary


def test_a_pinned_job_waits_for_its_group_and_names_it() -> None:
    core = pool(CONFIG + "assignments: {build: {group: small, pin: true}}\n", cpus=1)
    core.submit([action("one", job="build", cpus=0.5), action("two", job="build", cpus=0.5)], 1)
    assert placed(core, 1) == {"one": "s1"}
    pending = core.get(aid("two"), 1).pending
    assert pending is not None and pending.summary.startswith(
        "waiting: job `build` is pinned to group `small`: 1 agent lacks 0.5 CPUs"), pending


def test_dispatch_moves_a_blocked_groups_jobs_and_their_queued_work_follows() -> None:
    core = pool(cpus=1)
    core.submit([action("first", job="build", labels=["mesh-group:small"], cpus=0.5)], 1)
    run_and_end(core, placed(core, 1), 2)
    core.submit([action("queued", job="build", cpus=0.5)], 20)
    core.block_group("small", True, 20)
    assert core.job_home("build", 20).group == "small", "a block moves jobs at a dispatch"
    status = core.dispatch(21)
    assert core.job_home("build", 21).group == "big" and core.job_home("build", 21).how == (
        "dispatched")
    assert core.job_home("build", 21).load == pytest.approx(5.0), "0.5 CPUs for 10 s"
    assert [(g.name, g.jobs) for g in status.groups] == [("big", 1), ("small", 0),
                                                          ("default", 0)]
    assert placed(core, 22)["queued"] in ("b1", "b2")


def test_a_job_with_no_group_is_not_found() -> None:
    with pytest.raises(NotFound, match="has no group"):
        pool().job_home("never-seen", 1)


def test_a_jobs_group_does_not_split_its_accounts_fanout() -> None:
    core = pool(CONFIG + "assignments: {a: big, b: small}\n")
    core.accounts.create(acct("ci"), AccountConfig(charge_rate=[1], max_charge_seconds=100,
                                                   max_fanout=1), 0)
    core.step(100)  # the account earns a balance
    core.submit([action("x", job="a", account="ci"), action("y", job="b", account="ci")], 100)
    core.step(100)
    priorities = sorted(core.get(aid(i), 100).attempts[-1].priority for i in ("x", "y"))
    assert priorities == [0, 5], "one paid slot for the account's labels, the other free"


def test_groups_homes_and_load_survive_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    core = pool(CONFIG + "assignments: {docs: small}\n", cpus=1)
    core.restore(store.load(), 0)
    core.apply_pool(PoolConfig.parse(CONFIG + "assignments: {docs: small}\n"), 0)
    core.block_group("big", True, 0)
    core.submit([action("first", job="build", cpus=0.5)], 1)
    run_and_end(core, placed(core, 1), 2)
    with core.writing() as changes:
        store.write(changes)
    again = SchedulerState(stale_after=1e9)
    again.restore(Store(tmp_path / "state.db").load(), 30)
    status = again.pool_status(30)
    assert status.config == core.groups.config
    assert [g.name for g in status.groups if g.blocked] == ["big"]
    assert again.job_home("build", 30) == core.job_home("build", 30)
    assert again.job_home("build", 30).load == pytest.approx(5.0)
    assert again.job_home("docs", 30).how == "manual"


def test_a_dispatch_falls_due_a_period_after_the_last_or_after_the_first_look() -> None:
    core = pool()
    assert not core.dispatch_due(1000.0), "a new scheduler does not reshuffle at once"
    assert core.dispatch_due(1000.0 + 86400), "one period (1d by default) after"
    core.dispatch(2000.0)
    assert not core.dispatch_due(2000.0 + 86399) and core.dispatch_due(2000.0 + 86400)


def test_without_groups_a_job_gets_no_group_and_its_requests_no_label() -> None:
    core = SchedulerState(stale_after=1e9)
    core.agent_joined(agent("n1"), 0)
    core.load(nid("n1"), load(), 0)
    core.submit([action("a", job="build")], 1)
    assert placed(core, 1) == {"a": "n1"}
    with pytest.raises(NotFound):
        core.job_home("build", 1)
    assert core.groups.extra_labels("build") == (frozenset(), frozenset())


def test_a_dispatch_with_nowhere_to_send_work_keeps_the_jobs_groups() -> None:
    core = pool()
    core.submit([action("first", job="build", labels=["mesh-group:big"])], 1)
    run_and_end(core, placed(core, 1), 2)
    for name in ("b1", "b2", "s1"):
        core.agent_left(nid(name), 20)
    core.dispatch(21)  # as a config applied before any agent registered would
    assert core.job_home("build", 21).group == "big", "no agents: nothing to balance"


def test_an_unblocked_group_takes_the_work_that_waited_through_its_block() -> None:
    core = pool()
    core.block_group("small", True, 1)
    core.submit([action("waits", labels=["mesh-group:small"])], 2)
    assert placed(core, 2) == {}, "looked at (examined) while its only agent was blocked"
    core.block_group("small", False, 3)
    assert placed(core, 3) == {"waits": "s1"}, "nothing else happened in between"


def test_a_damaged_pool_record_starts_the_scheduler_with_no_config(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    core = pool()
    core.restore(store.load(), 0)
    core.apply_pool(PoolConfig.parse(CONFIG), 0)
    with core.writing() as changes:
        store.write(changes)
    store.db.execute("UPDATE pool SET record = '{\"config\": 7}'")
    again = SchedulerState(stale_after=1e9)
    again.restore(store.load(), 1)
    assert again.pool_status(1).config == PoolConfig()
