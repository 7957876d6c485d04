"""Bounded history: finished actions leave memory once written, leave the store after the
retention period (an expired id says so), and a listing pages through all of it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from mesh.errors import NotFound
from mesh.logstore import LogStore
from mesh.schema import ActionId, ListQuery, LogBatch
from mesh.stages import Stage
from scheduler.core.state import SchedulerState
from scheduler.sinks import EventBook
from scheduler.store import VACUUM_PAGES, Store
from tests.builders import action, agent, aid, load, nid, report


def mesh_core(store: Store) -> SchedulerState:
    core = SchedulerState(sink=EventBook(store.events), archive=store)
    core.agent_joined(agent("n1", cpus=4), 0)
    core.load(nid("n1"), load(), 0)
    return core


def written(core: SchedulerState, store: Store) -> None:
    with core.writing() as changes:
        store.write(changes)


def run_to_end(core: SchedulerState, store: Store, names: list[str], now: float) -> None:
    """Start the named actions and end them (succeeded) at `now`, written."""
    core.load(nid("n1"), load(at=now), now)
    core.step(now)
    for name in names:
        core.report(report(name, 1, "n1", "succeeded", exit_code=0), now)
    written(core, store)


def test_finished_actions_leave_memory_once_written_and_are_answered_from_the_store(
        tmp_path: Path) -> None:
    store = Store(tmp_path)
    core = mesh_core(store)
    core.submit([action(f"a{i}") for i in range(4)], 1, commit=store.write)
    run_to_end(core, store, [f"a{i}" for i in range(4)], 2)
    core.submit([action("queued", cpus=64)], 3, commit=store.write)  # never fits: waits
    counts = core.counts()
    assert core.evict_finished(keep=1) == 3
    assert core.counts() == counts, "counts include what left memory"
    assert core.get(aid("a0"), 4).stage is Stage.SUCCEEDED, "read back from the store"
    assert [s.id for s in core.list_actions()] == ["a0", "a1", "a2", "a3", "queued"]
    assert core.evict_finished(keep=1) == 0
    core.report(report("a3", 1, "n1", "succeeded", exit_code=0), 5)  # a late repeat
    assert core.get(aid("queued"), 5).stage is Stage.QUEUED, "unfinished stays"


def test_an_unwritten_finish_stays_in_memory_until_it_is_written(tmp_path: Path) -> None:
    store = Store(tmp_path)
    core = mesh_core(store)
    core.submit([action("a")], 1, commit=store.write)
    core.step(1)
    core.report(report("a", 1, "n1", "succeeded", exit_code=0), 2)
    assert core.evict_finished(keep=0) == 0, "its end is not in the store yet"
    written(core, store)
    assert core.evict_finished(keep=0) == 1


def test_expired_actions_are_deleted_in_batches_and_an_expired_id_says_so(
        tmp_path: Path) -> None:
    store = Store(tmp_path)
    core = mesh_core(store)
    core.submit([action(f"old{i}") for i in range(5)], 1, commit=store.write)
    run_to_end(core, store, [f"old{i}" for i in range(4)], 2)  # old4 stays running
    core.submit([action("new")], 50, commit=store.write)
    run_to_end(core, store, ["new"], 60)
    total = sum(core.counts().values())

    gone = store.expire(before=30, limit=3, forget_before=0)
    assert len(gone) == 3
    core.expired(gone)
    gone += store.expire(before=30, limit=3, forget_before=0)
    core.expired(gone[3:])
    assert sorted(a for a, _ in gone) == ["old0", "old1", "old2", "old3"]
    assert sum(core.counts().values()) == total - 4
    with pytest.raises(NotFound, match="expired"):
        core.get(aid("old0"), 70)
    assert not core.get(aid("old4"), 70).done, "unfinished is never deleted"
    assert core.get(aid("new"), 70).stage is Stage.SUCCEEDED
    assert store.events(aid("old0")) == [] and store.find(aid("old0")) is None
    # The ids are remembered for a while, then forgotten too.
    store.expire(before=30, limit=3, forget_before=1e9)
    with pytest.raises(NotFound, match="no action"):
        core.get(aid("old0"), 70)


def test_deleted_history_gives_its_space_back_to_the_file_system(tmp_path: Path) -> None:
    store = Store(tmp_path)
    core = mesh_core(store)
    names = [f"big{i}" for i in range(2000)]
    core.submit([action(name, env={"PAD": "x" * 1000}) for name in names], 1,
                commit=store.write)
    for name in names:
        core.cancel(aid(name), 2)
    written(core, store)
    full = pages(store)
    assert full > 500, "two megabytes of actions"
    while store.expire(before=10, limit=500, forget_before=0):
        pass
    assert pages(store) < full // 4
    assert store.db.execute("PRAGMA freelist_count").fetchone()[0] < VACUUM_PAGES


def pages(store: Store) -> int:
    return int(store.db.execute("PRAGMA page_count").fetchone()[0])


def test_paging_shows_every_action_exactly_once_while_actions_are_added(
        tmp_path: Path) -> None:
    rng = random.Random(7)
    store = Store(tmp_path)
    core = mesh_core(store)
    names = [f"x{i}" for i in range(30)]
    core.submit([action(n) for n in names], 1, commit=store.write)
    run_to_end(core, store, names[:4], 2)
    core.evict_finished(keep=1)
    seen: list[str] = []
    cursor: int | None = 0
    added = 0
    while cursor is not None:
        page = core.page(ListQuery(after=cursor, limit=rng.randint(1, 7)))
        seen += [s.id for s in page.actions]
        cursor = page.cursor
        if added < 20:  # submitted between pages: they come after, once each
            fresh = [f"y{added + i}" for i in range(3)]
            core.submit([action(n) for n in fresh], 3, commit=store.write)
            added += 3
    assert len(seen) == len(set(seen)), "an action was shown twice"
    assert seen == names + [f"y{i}" for i in range(added)]


def test_listings_filter_by_stage_account_job_tag_and_time(tmp_path: Path) -> None:
    store = Store(tmp_path)
    core = mesh_core(store)
    core.submit([action("a", job="build", tags={"pr": "1"}),
                 action("b", job="test", tags={"pr": "2"})], 1, commit=store.write)
    core.submit([action("c", job="build", tags={"pr": "2"})], 5, commit=store.write)
    run_to_end(core, store, ["a", "b", "c"], 6)
    core.submit([action("d", job="build", cpus=64)], 7, commit=store.write)
    core.evict_finished(keep=0)

    def ids(**query: object) -> list[str]:
        return [s.id for s in core.page(ListQuery.model_validate(query)).actions]

    assert ids(job="build") == ["a", "c", "d"]
    assert ids(job="build", tags={"pr": "2"}) == ["c"]
    assert ids(stage=Stage.QUEUED) == ["d"]
    assert ids(stage=Stage.SUCCEEDED, submitted_after=2) == ["c"]
    assert ids(submitted_before=5) == ["a", "b"]
    assert ids(account="nobody") == []


def test_the_relay_forgets_logs_of_actions_closed_before_the_horizon(tmp_path: Path) -> None:
    now = [100.0]
    logs = LogStore(tmp_path, memory_budget=0, clock=lambda: now[0])  # everything spills
    for name in ("done", "retried", "open"):
        logs.append(LogBatch.of(ActionId(name), 1, "stdout", 0, [f"{name} line"]))
    logs.close("done", 1, 1)
    logs.close("retried", 1, 1)
    now[0] = 200.0
    logs.append(LogBatch.of(ActionId("retried"), 2, "stdout", 0, ["again"]))
    assert logs.expire(before=150.0) == 1
    assert logs.attempts("done") == [] and logs.attempts("retried") == [1, 2]
    assert not any(p.name == "done" or "done" in p.name for p in tmp_path.rglob("*")), \
        "its spill file is gone"
    assert logs.read("open", 1, 0, 10).batches, "an open log is never expired"


def test_the_finished_kept_in_memory_are_counted_across_final_stages(tmp_path: Path) -> None:
    store = Store(tmp_path)
    core = mesh_core(store)
    core.submit([action(f"a{i}") for i in range(4)], 1, commit=store.write)
    core.load(nid("n1"), load(at=2), 2)
    core.step(2)
    for i in range(4):
        if i % 2:
            core.report(report(f"a{i}", 1, "n1", "failed", exit_code=1), 3 + i)
        else:
            core.report(report(f"a{i}", 1, "n1", "succeeded", exit_code=0), 3 + i)
    written(core, store)
    assert core.evict_finished(keep=2) == 2, "keep counts all final stages together"
    assert {s.id for s in core.list_actions()} == {"a0", "a1", "a2", "a3"}


def test_an_expired_actions_events_are_not_served_from_memory(tmp_path: Path) -> None:
    store = Store(tmp_path)
    book = EventBook(store.events)
    core = SchedulerState(sink=book, archive=store)
    core.agent_joined(agent("n1", cpus=4), 0)
    core.load(nid("n1"), load(), 0)
    core.submit([action("a")], 1, commit=store.write)
    run_to_end(core, store, ["a"], 2)
    core.evict_finished(keep=0)
    assert book.since(aid("a"), 0), "read back from the store"
    core.expired(store.expire(before=10, limit=10, forget_before=0))
    assert book.since(aid("a"), 0) == [], "an expired action's events were still served"
